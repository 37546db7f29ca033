"""The DL_Track aponeurosis sample (scanner screenshots + binary masks) as a contract dataset.

    python -m tpnet.data.dltrack ../shared/data/dltrack-apo-sample data/dltrack-apo

The source (``images/<id>.png``, ``masks/<id>.png``; Cronin et al., arXiv:2009.04790, Apache-2.0) is not one
screen layout but five, told apart by the screen size (``DLTRACK_LAYOUTS``): four scanner screens with chrome
around the B-mode image and a depth ruler, and 512 x 512 frames that are already just the image, without a ruler.
Per frame the converter
- crops the layout's B-mode box out of the screen (and the mask alike), then trims black rows and columns at its
  border (one screen size shows two image widths, depending on the depth setting);
- reads the pixel size from the depth ruler's ticks (the median spacing between ticks, ``mm_per_tick`` apart;
  read from the screen, not stated by the source); frames without a ruler get the median of the measured frames,
  marked ``spacing_source=assumed`` in the manifest;
- maps the mask's 255 to class 1 (``aponeurosis``) and writes the B-mode as grey (the screens are grey RGB).

No subject ids are given: every frame is its own subject (``subject_id = sample_id``), so subject-level splits and
bootstrap intervals are frame-level here. The split is written into the manifest (``split`` column), stratified
by layout and seeded, so every recipe trained on the converted set sees the same test frames.
"""

from __future__ import annotations

import argparse
import csv
import io as std_io
import random
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from tpnet.core.atomic import atomic_write_bytes
from tpnet.core.io import read_mask, read_rgb, write_png

CLASSES = ("background", "aponeurosis")
BLACK_LEVEL = 12  # border rows/columns of the box whose brightest pixel is at most this are screen, not image
TICK_LEVEL = 100  # a depth-ruler tick is brighter than this


@dataclass(frozen=True)
class ScreenLayout:
    """Where the image and the depth ruler sit on one kind of screen."""

    name: str
    screen_size: tuple[int, int]  # (width, height) of the screenshot: how a frame's layout is recognised
    bmode_box: tuple[int, int, int, int]  # x, y, w, h of the image (black margins inside it are trimmed)
    ticks_x: int | None = None  # screen column crossing the ruler's ticks; None = no ruler on this screen
    mm_per_tick: float | None = None  # depth between two neighbouring ticks in that column


# Read off the screens by eye and from column/row statistics (docs/generalisation.md, "Real images").
DLTRACK_LAYOUTS: tuple[ScreenLayout, ...] = (
    # ruler right of the image: labels 0 and 50 at ticks y = 43 and 673.5, ticks 126 px = 10 mm apart
    ScreenLayout("screen-1234x688", (1234, 688), (237, 43, 760, 643), ticks_x=1159, mm_per_tick=10.0),
    # same software, smaller screen: labels 0 and 60 at the first and last of 7 ticks 77.5 px apart
    ScreenLayout("screen-660x556", (660, 556), (99, 43, 464, 511), ticks_x=585, mm_per_tick=10.0),
    # ruler along the left edge: long ticks (x <= 3) every 10 mm with short 5 mm ticks between them
    ScreenLayout("screen-800x652", (800, 652), (104, 129, 439, 470), ticks_x=2, mm_per_tick=10.0),
    # ruler along the left edge, every 5th tick longer (taken as 10 mm ticks, 5 cm marks: an assumption)
    ScreenLayout("screen-800x600", (800, 600), (175, 70, 331, 452), ticks_x=2, mm_per_tick=10.0),
    # already cropped to the image (and probably resized) by the source: no ruler, pixel size assumed
    ScreenLayout("image-512x512", (512, 512), (0, 0, 512, 512)),
)


class DLTrackError(ValueError):
    """A frame the converter cannot place: unknown screen size, no ruler ticks, mask of another size."""


@dataclass
class ConvertedFrame:
    sample_id: str
    layout: str
    bmode: np.ndarray  # uint8 (H, W), the cropped image
    mask: np.ndarray  # uint8 (H, W), 0 background / 1 aponeurosis
    spacing_mm: float | None  # None = no ruler on this screen


def layout_for(width: int, height: int, layouts: Sequence[ScreenLayout]) -> ScreenLayout:
    for layout in layouts:
        if layout.screen_size == (width, height):
            return layout
    known = ", ".join(f"{w}x{h}" for w, h in (lay.screen_size for lay in layouts))
    raise DLTrackError(f"screen {width}x{height} px matches no layout (known: {known})")


def ruler_spacing_mm(grey: np.ndarray, ticks_x: int, mm_per_tick: float) -> float:
    """Pixel size from the ruler: the median distance between tick centres in column ``ticks_x``."""
    bright = np.flatnonzero(grey[:, ticks_x] > TICK_LEVEL)
    if bright.size == 0:
        raise DLTrackError(f"no ruler ticks in screen column {ticks_x}")
    runs = np.split(bright, np.flatnonzero(np.diff(bright) > 1) + 1)  # a tick is 1-2 rows thick
    centres = np.array([run.mean() for run in runs])
    if centres.size < 3:
        raise DLTrackError(f"only {centres.size} ruler tick(s) in screen column {ticks_x}; need 3")
    return mm_per_tick / float(np.median(np.diff(centres)))


def _trimmed_box(grey: np.ndarray, box: tuple[int, int, int, int]) -> tuple[slice, slice]:
    x, y, w, h = box
    inside = grey[y : y + h, x : x + w]
    cols = np.flatnonzero(inside.max(axis=0) > BLACK_LEVEL)
    rows = np.flatnonzero(inside.max(axis=1) > BLACK_LEVEL)
    if cols.size == 0 or rows.size == 0:
        raise DLTrackError(f"the B-mode box {list(box)} is black")
    return slice(y + rows[0], y + rows[-1] + 1), slice(x + cols[0], x + cols[-1] + 1)


def convert_frame(
    image_path: Path, mask_path: Path, layouts: Sequence[ScreenLayout] = DLTRACK_LAYOUTS
) -> ConvertedFrame:
    """One screenshot and its mask, cropped to the image, with the ruler's pixel size (None without a ruler)."""
    rgb = read_rgb(image_path)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    raw_mask = read_mask(mask_path)
    if raw_mask.shape != grey.shape:
        raise DLTrackError(
            f"{mask_path}: mask {raw_mask.shape[::-1]} differs from the screen {grey.shape[::-1]}"
        )
    layout = layout_for(grey.shape[1], grey.shape[0], layouts)
    spacing_mm = None
    if layout.ticks_x is not None and layout.mm_per_tick is not None:
        try:
            spacing_mm = ruler_spacing_mm(grey, layout.ticks_x, layout.mm_per_tick)
        except DLTrackError as exc:
            raise DLTrackError(f"{image_path}: {exc}") from exc
    rows, cols = _trimmed_box(grey, layout.bmode_box)
    return ConvertedFrame(
        sample_id=image_path.stem,
        layout=layout.name,
        bmode=np.ascontiguousarray(grey[rows, cols]),
        mask=(raw_mask[rows, cols] >= 128).astype(np.uint8),  # 255 = aponeurosis
        spacing_mm=spacing_mm,
    )


def assign_splits(
    frames: Sequence[ConvertedFrame], test_fraction: float, val_fraction: float, seed: int
) -> dict[str, str]:
    """sample_id -> train/val/test: shuffled within each layout, then dealt so each split mixes layouts."""
    rng = random.Random(seed)
    by_layout: dict[str, list[str]] = {}
    for frame in frames:
        by_layout.setdefault(frame.layout, []).append(frame.sample_id)
    order = []
    for name in sorted(by_layout):
        ids = sorted(by_layout[name])
        rng.shuffle(ids)
        order.extend(ids)
    # evenly spaced positions of the layout-sorted order: a systematic sample keeps the layout mix in each split
    n = len(order)
    n_test, n_val = round(n * test_fraction), round(n * val_fraction)
    test = {int(p) for p in np.linspace(0, n - 1, n_test).round()} if n_test else set()
    rest = [p for p in range(n) if p not in test]
    val = {rest[int(i)] for i in np.linspace(0, len(rest) - 1, n_val).round()} if n_val else set()
    return {sid: "test" if p in test else "val" if p in val else "train" for p, sid in enumerate(order)}


def convert_dltrack(
    source: str | Path,
    out: str | Path,
    layouts: Sequence[ScreenLayout] = DLTRACK_LAYOUTS,
    test_fraction: float = 0.25,
    val_fraction: float = 0.15,
    seed: int = 0,
) -> list[dict[str, str]]:
    """Write ``out`` as a contract dataset from ``source/images`` and ``source/masks``; returns the manifest rows."""
    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()):
        raise DLTrackError(f"{out}: exists and is not empty; convert into a new folder")
    images = sorted((source / "images").glob("*.png"))
    if not images:
        raise DLTrackError(f"{source}/images: no PNG screenshots")
    frames = [convert_frame(path, source / "masks" / path.name, layouts) for path in images]
    measured = [f.spacing_mm for f in frames if f.spacing_mm is not None]
    if not measured:
        raise DLTrackError(f"{source}: no frame has a depth ruler, so no pixel size can be read or assumed")
    assumed_mm = statistics.median(measured)
    splits = assign_splits(frames, test_fraction, val_fraction, seed)
    rows = []
    for frame in frames:
        write_png(out / "bmode" / f"{frame.sample_id}.png", frame.bmode)
        write_png(out / "masks" / f"{frame.sample_id}.png", frame.mask)
        rows.append(
            {
                "sample_id": frame.sample_id,
                "subject_id": frame.sample_id,  # no subject ids in the source: one subject per frame
                "bmode": f"bmode/{frame.sample_id}.png",
                "elasto": "",
                "mask": f"masks/{frame.sample_id}.png",
                "spacing_mm": f"{frame.spacing_mm if frame.spacing_mm is not None else assumed_mm:.5f}",
                "spacing_source": "ruler" if frame.spacing_mm is not None else "assumed",
                "layout": frame.layout,
                "split": splits[frame.sample_id],
            }
        )
    _write_dataset_files(out, rows, source, assumed_mm)
    return rows


def _write_dataset_files(out: Path, rows: list[dict[str, str]], source: Path, assumed_mm: float) -> None:
    spec = {
        "name": "dltrack-apo",
        "classes": list(CLASSES),
        "spacing_mm": round(assumed_mm, 5),
        "source": {
            "data": "DL_Track aponeurosis images and masks (njcronin/DL_Track, Cronin et al., arXiv:2009.04790)",
            "licence": "Apache-2.0",
            "converted_from": str(source),
            "tool": "python -m tpnet.data.dltrack",
        },
        "notes": [
            "B-mode only, cropped out of the screen chrome; masks cropped alike (255 -> 1 aponeurosis)",
            "spacing_mm per row: read from the depth ruler's ticks (spacing_source=ruler), not stated by the "
            "source; frames without a ruler get the median of the measured ones (spacing_source=assumed)",
            "no subject ids in the source: every frame is its own subject",
        ],
    }
    atomic_write_bytes(out / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False).encode())
    buffer = std_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out / "manifest.csv", buffer.getvalue().encode())  # last: a complete dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tpnet.data.dltrack", description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with images/ and masks/")
    parser.add_argument("out", type=Path, help="new dataset folder")
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        rows = convert_dltrack(args.source, args.out, test_fraction=args.test_fraction,
                               val_fraction=args.val_fraction, seed=args.seed)  # fmt: skip
    except DLTrackError as exc:
        print(f"dltrack: {exc}", file=sys.stderr)
        return 2
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assumed = sum(r["spacing_source"] == "assumed" for r in rows)
    print(f"wrote {args.out}: {len(rows)} frames {counts}; pixel size from the ruler on {len(rows) - assumed}, "
          f"assumed on {assumed}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
