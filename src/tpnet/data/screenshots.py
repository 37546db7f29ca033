"""Scanner screenshots into a contract dataset (``tpnet-data import-screenshots``), and a by-eye check of a new
scanner profile (``tpnet-data profile-check``).

Import: every PNG/JPEG/BMP below IN (nested patient/visit folders included; hidden files and folders skipped)
is read with the profile (``tpnet.core.scanner_profile.read_screenshot``) and written as

  OUT/bmode/<rel>.png   uint8 grey, the B-mode box (under overlaid colour: the grey estimated beneath it)
  OUT/elasto/<rel>.tif  float32 kPa, NaN = no signal or outside the SWE box (profiles with a colour bar only)
  OUT/masks/<rel>.png   the label map from ``--labels DIR/<rel>.png`` when there is one (B-mode box size)
  OUT/manifest.csv      sample_id = <rel> with "/" as "__" (tpnet-infer names nested inputs the same way),
                        subject_id = the first folder under IN (a flat IN: the file's stem), spacing_mm from
                        the profile (empty when it has none), source = the screenshot's path below IN
  OUT/dataset.yaml      the default classes, elasto_unit kPa, the profile used

where <rel> is the screenshot's path below IN without its suffix. A screenshot that cannot be read or that the
profile does not fit, and a label whose size differs, is listed by name with the reason and skipped (exit 3).
"""

from __future__ import annotations

import csv
import io as std_io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from tpnet.core.atomic import atomic_write_bytes
from tpnet.core.colour_swe import sample_colour_bar
from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.io import RGB_SUFFIXES, FrameReadError, read_mask, read_rgb, write_png, write_tiff
from tpnet.core.scanner_profile import ScannerProfile, crop, load_profile, read_screenshot

MANIFEST_COLUMNS = ("sample_id", "subject_id", "bmode", "elasto", "mask", "spacing_mm", "source")
BOX_COLOURS = {"bmode_box": (60, 220, 60), "swe_box": (255, 210, 0), "colorbar_box": (255, 60, 255)}  # RGB


class ScreenshotImportError(ValueError):
    """The import cannot start (IN missing, OUT inside IN, OUT not empty); the message says why."""


@dataclass
class ImportReport:
    out: Path
    written: list[str] = field(default_factory=list)  # sample_ids
    problems: list[str] = field(default_factory=list)  # "<screenshot path below IN>: <reason>"
    notes: list[str] = field(default_factory=list)


def find_screenshots(root: Path, skip: Path | None = None) -> list[Path]:
    """PNG/JPEG/BMP files below ``root``, sorted; hidden names and anything under ``skip`` left out."""
    found = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if skip is not None and path.resolve().is_relative_to(skip):
            continue
        if path.suffix.lower() in RGB_SUFFIXES:
            found.append(path)
    return found


def import_screenshots(
    in_dir: str | Path,
    out_dir: str | Path,
    profile_path: str | Path,
    labels_dir: str | Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> ImportReport:
    """Turn a folder of screenshots into a contract dataset (module docstring). ProfileError for a bad
    profile, ScreenshotImportError when the folders are unusable; per-screenshot problems go to the report."""
    profile = load_profile(profile_path)
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    labels = Path(labels_dir) if labels_dir is not None else None
    _check_folders(in_dir, out_dir, labels)
    report = ImportReport(out=out_dir)
    rows: list[dict[str, str]] = []
    seen: dict[str, str] = {}
    for path in find_screenshots(in_dir, skip=labels.resolve() if labels is not None else None):
        rel = path.relative_to(in_dir)
        rel_stem = rel.with_suffix("").as_posix()
        sample_id = rel_stem.replace("/", "__")
        if sample_id in seen:
            report.problems.append(
                f"{rel.as_posix()}: gives sample_id {sample_id!r} a second time (first: {seen[sample_id]}); rename one"
            )
            continue
        seen[sample_id] = rel.as_posix()
        try:
            row = _import_one(path, rel, rel_stem, sample_id, profile, out_dir, labels, report.notes)
        except FrameReadError as exc:
            report.problems.append(f"{rel.as_posix()}: {_strip(str(exc), path)}")
            continue
        rows.append(row)
        report.written.append(sample_id)
        if progress is not None:
            progress(sample_id)
    _write_dataset_files(out_dir, rows, profile)
    return report


def _check_folders(in_dir: Path, out_dir: Path, labels: Path | None) -> None:
    if not in_dir.is_dir():
        raise ScreenshotImportError(f"{in_dir}: not a folder of screenshots")
    if labels is not None and not labels.is_dir():
        raise ScreenshotImportError(f"{labels}: --labels is not a folder")
    source, target = in_dir.resolve(), out_dir.resolve()
    if target == source or target.is_relative_to(source):
        raise ScreenshotImportError(
            f"{out_dir}: the output folder is inside the input folder {in_dir}; choose one outside it"
        )
    if source.is_relative_to(target):
        raise ScreenshotImportError(
            f"{out_dir}: the output folder contains the input folder {in_dir}; choose another"
        )
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ScreenshotImportError(f"{out_dir}: exists and is not an empty folder; import into a new folder")


def _import_one(
    path: Path,
    rel: Path,
    rel_stem: str,
    sample_id: str,
    profile: ScannerProfile,
    out_dir: Path,
    labels: Path | None,
    notes: list[str],
) -> dict[str, str]:
    frame = read_screenshot(path, profile)
    mask = None
    if labels is not None:
        label_path = labels / f"{rel_stem}.png"
        if label_path.is_file():
            mask = read_mask(label_path)
            if mask.shape != frame.bmode.shape:
                raise FrameReadError(
                    f"{path}: its label {label_path} is {mask.shape[1]}x{mask.shape[0]} px, the B-mode box is "
                    f"{frame.bmode.shape[1]}x{frame.bmode.shape[0]} px (labels are drawn on the B-mode box)"
                )
            if int(mask.max(initial=0)) >= len(DEFAULT_CLASSES):
                raise FrameReadError(
                    f"{path}: its label {label_path} has value {int(mask.max())}, outside the classes "
                    f"0..{len(DEFAULT_CLASSES) - 1} {list(DEFAULT_CLASSES)}"
                )
    notes.extend(f"{rel.as_posix()}: {_strip(note, path)}" for note in frame.notes)
    bmode_rel = f"bmode/{rel_stem}.png"
    write_png(out_dir / bmode_rel, np.round(frame.bmode * 255.0).astype(np.uint8))
    elasto_rel = ""
    if frame.elasto_kpa is not None:
        elasto_rel = f"elasto/{rel_stem}.tif"
        write_tiff(out_dir / elasto_rel, frame.elasto_kpa.astype(np.float32))
    mask_rel = ""
    if mask is not None:
        mask_rel = f"masks/{rel_stem}.png"
        write_png(out_dir / mask_rel, mask)
    first = rel.parts[0] if len(rel.parts) > 1 else rel.with_suffix("").name
    return {
        "sample_id": sample_id,
        "subject_id": first,
        "bmode": bmode_rel,
        "elasto": elasto_rel,
        "mask": mask_rel,
        "spacing_mm": f"{frame.spacing_mm:.6g}" if frame.spacing_mm is not None else "",
        "source": rel.as_posix(),
    }


def _write_dataset_files(out_dir: Path, rows: list[dict[str, str]], profile: ScannerProfile) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "name": f"screenshots-{profile.name}".replace(" ", "-"),
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "source": {
            "tool": "tpnet-data import-screenshots",
            "profile": str(profile.path),
            "scanner": profile.name,
        },
    }
    atomic_write_bytes(out_dir / "dataset.yaml", yaml.safe_dump(spec, sort_keys=False).encode())
    buffer = std_io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(out_dir / "manifest.csv", buffer.getvalue().encode())  # last: a complete dataset


def _strip(message: str, path: Path) -> str:
    prefix = f"{path}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


# ------------------------------------------------------------------------------------------------ profile check
@dataclass
class ProfileCheck:
    ok: bool
    lines: list[str]  # what to print
    image_path: Path | None  # the PNG written, None when the screenshot could not be read


def profile_check(
    screenshot: str | Path, profile_path: str | Path, out_png: str | Path | None = None
) -> ProfileCheck:
    """Apply a profile to one screenshot: a PNG with the labelled boxes drawn over it (and, for SWE, the
    decoded kPa re-drawn in the bar's colours beside it, which should look like the SWE view) and the decoded
    kPa range. ``ok`` is False with the reason when the profile does not fit. ProfileError for a bad profile."""
    profile = load_profile(profile_path)
    screenshot = Path(screenshot)
    out = Path(out_png) if out_png is not None else Path(f"{screenshot.stem}_profile_check.png")
    if out.resolve() == screenshot.resolve():
        raise ScreenshotImportError(f"{out}: --out would overwrite the screenshot")
    lines = [f"profile {profile.path} ({profile.name}): layout {profile.layout}, blend {profile.blend}"]
    try:
        rgb = read_rgb(screenshot)
    except FrameReadError as exc:
        return ProfileCheck(False, [*lines, f"does not fit: {exc}"], None)
    lines.append(f"screenshot {screenshot}: {rgb.shape[1]}x{rgb.shape[0]} px")
    try:
        frame = read_screenshot(screenshot, profile)
    except FrameReadError as exc:
        write_png(out, _draw_boxes(rgb, profile))
        return ProfileCheck(False, [*lines, f"does not fit: {exc}", f"boxes drawn: {out}"], out)
    spacing = frame.spacing_mm
    lines.append(
        f"spacing: {spacing:.4g} mm/px"
        if spacing is not None
        else "spacing: none (set mm_per_px or depth_scale)"
    )
    panels = [_draw_boxes(rgb, profile)]
    if frame.elasto_kpa is not None:
        kpa = frame.elasto_kpa
        decoded = kpa[np.isfinite(kpa)]
        x, y, w, h = profile.swe_box
        box_pixels = w * h
        lines.append(
            f"colour bar: {profile.colorbar_range_text} = {profile.colorbar_range_kpa[0]:g}-"
            f"{profile.colorbar_range_kpa[1]:g} kPa, {profile.colorbar_orientation}"
        )
        if decoded.size:
            lines.append(
                f"decoded kPa: min {decoded.min():.1f}, median {np.median(decoded):.1f}, max {decoded.max():.1f}; "
                f"{decoded.size / box_pixels:.1%} of the SWE box ({decoded.size} of {box_pixels} px) recovered"
            )
        else:
            lines.append("decoded kPa: none (no colour-map pixel in swe_box)")
        panels.append(_decoded_panel(rgb, frame.bmode, kpa, profile))
    lines.extend(f"note: {_strip(note, screenshot)}" for note in frame.notes)
    write_png(out, _side_by_side(panels))
    lines.append(f"boxes drawn: {out}")
    return ProfileCheck(True, lines, out)


def _draw_boxes(rgb: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    canvas = np.ascontiguousarray(rgb.copy())
    for key, (x, y, w, h) in profile.boxes().items():
        colour = BOX_COLOURS[key]
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), colour, 1)
        label_y = y - 3 if y >= 12 else min(y + h + 10, canvas.shape[0] - 2)
        cv2.putText(canvas, key, (x + 1, label_y), cv2.FONT_HERSHEY_SIMPLEX, 0.35, colour, 1, cv2.LINE_AA)
    return canvas


def _decoded_panel(
    rgb: np.ndarray, bmode: np.ndarray, kpa: np.ndarray, profile: ScannerProfile
) -> np.ndarray:
    """The decoded kPa drawn back through the bar's own colours over the grey B-mode."""
    bar = sample_colour_bar(
        crop(rgb, profile.colorbar_box), profile.colorbar_orientation, profile.colorbar_range_kpa
    )
    grey = np.repeat(np.round(bmode * 255)[..., None], 3, axis=2).astype(np.uint8)
    valid = np.isfinite(kpa)
    low, high = profile.colorbar_range_kpa
    index = np.clip(
        np.round((np.where(valid, kpa, low) - low) / (high - low) * (len(bar.rgb) - 1)), 0, len(bar.rgb) - 1
    )
    colours = np.round(bar.rgb[index.astype(np.int64)] * 255).astype(np.uint8)
    panel = np.where(valid[..., None], colours, grey)
    titled = np.zeros((panel.shape[0] + 16, panel.shape[1], 3), np.uint8)
    titled[16:] = panel
    cv2.putText(
        titled, "decoded kPa (bar colours)", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (230, 230, 230), 1
    )
    return titled


def _side_by_side(panels: list[np.ndarray]) -> np.ndarray:
    height = max(p.shape[0] for p in panels)
    padded = [np.pad(p, ((0, height - p.shape[0]), (0, 8), (0, 0))) for p in panels]
    return np.concatenate(padded, axis=1)[:, :-8]
