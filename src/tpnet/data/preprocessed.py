"""The preprocessed frame cache (nnU-Net's preprocessing step): every frame decoded, converted to kPa and resampled
to the run's target spacing once, into flat memory-mappable arrays, so training workers only crop, augment and
encode.

Layout of one cache (a folder ``<dataset>-<key>`` under the cache root):
  ``bmode.u16``       B-mode in [0, 1] as uint16 (x 65535: finer than any scanner's 8-bit grey)
  ``elasto.f16``      elastography in kPa as float16 (NaN = no signal; 0.1 kPa steps at 200 kPa)
  ``mask.u8``         label maps
  ``foreground.i32``  (y, x) of every foreground pixel per frame, for foreground-forced crops without a scan
  ``index.json``      per frame: sample id, shape, offsets, whole-frame B-mode statistics; the key; written last

The key hashes the manifest, dataset.yaml, the size and modification time of every file the frames come from,
the target spacing, the storage encoding and ``CACHE_FORMAT``: a changed manifest, file or spacing gives another
folder, so a stale cache is never read. A cache is built into a temporary folder and renamed into place under a
file lock: a reader never sees half a cache, and two runs that start together build it once (the second waits
for the first and reads its result).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock

from tpnet.core.contract import DatasetSpec, ManifestRow, resolve_path, trp_class_indices
from tpnet.core.encoding import imaged_region_stats
from tpnet.core.terminal import progress_bar

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when what a frame holds changes (reading, resampling, storage)
BMODE_SCALE = 65535.0
STORAGE = "bmode=uint16/65535,elasto=float16-kPa,mask=uint8,foreground=int32-yx"
INDEX = "index.json"
_FILES = {
    "bmode": ("bmode.u16", np.uint16),
    "elasto": ("elasto.f16", np.float16),
    "mask": ("mask.u8", np.uint8),
}
_FOREGROUND = ("foreground.i32", np.int32)


class CacheError(RuntimeError):
    """A frame could not be preprocessed (the message names the sample), or a cache folder is unusable."""


def foreground_labels(spec: DatasetSpec) -> list[int]:
    """Labels that foreground-forced crops centre on: the trigger-point classes, else every labelled structure
    (a dataset of nerves, vessels or aponeuroses)."""
    return trp_class_indices(spec.classes, spec.class_roles) or list(range(1, len(spec.classes)))


def cache_key(spec: DatasetSpec, rows: Sequence[ManifestRow], spacing_mm: float) -> str:
    """What the cached frames depend on, hashed (see the module docstring)."""
    digest = hashlib.sha256()
    digest.update(f"format={CACHE_FORMAT};storage={STORAGE};spacing_mm={spacing_mm:.9g}\n".encode())
    for name in ("manifest.csv", "dataset.yaml"):
        path = spec.root / name
        digest.update(path.read_bytes() if path.exists() else b"-")
    for row in rows:
        digest.update(f"{row.sample_id}|{row.frame}\n".encode())
        for relative in (row.bmode, row.elasto, row.mask):
            if not relative:
                digest.update(b"-\n")
                continue
            stat = resolve_path(spec.root, relative).stat()
            digest.update(f"{relative}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


@dataclass
class FrameView:
    """One cached frame as views into the memory maps (nothing copied until a crop is taken)."""

    bmode: np.ndarray  # uint16, scale 1 / BMODE_SCALE
    elasto: np.ndarray | None  # float16 kPa
    mask: np.ndarray  # uint8
    foreground: np.ndarray  # int32 [n, 2] (y, x)
    bmode_stats: tuple[float, float]


class PreprocessedFrames:
    """A built cache, read through memory maps opened lazily in each process (a DataLoader worker opens its own
    after the fork; pickling sends the folder only)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index_path = self.folder / INDEX
        try:
            self.index = json.loads(index_path.read_text())
        except (OSError, ValueError) as exc:
            raise CacheError(f"{self.folder}: not a complete preprocessed cache ({exc})") from None
        self.frames: list[dict[str, Any]] = self.index["frames"]
        self.position = {f["sample_id"]: i for i, f in enumerate(self.frames)}
        self._maps: dict[str, np.ndarray] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"folder": self.folder}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["folder"])

    @property
    def spacing_mm(self) -> float:
        return float(self.index["spacing_mm"])

    @property
    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.position

    def view(self, sample_id: str) -> FrameView:
        maps = self._open()
        f = self.frames[self.position[sample_id]]
        h, w = f["shape"]
        n = h * w

        def plane(name: str, offset: int) -> np.ndarray:
            return maps[name][offset : offset + n].reshape(h, w)

        fg_start, fg_count = f["foreground"]
        return FrameView(
            bmode=plane("bmode", f["offset"]),
            elasto=plane("elasto", f["elasto_offset"]) if f["elasto_offset"] >= 0 else None,
            mask=plane("mask", f["offset"]),
            foreground=maps["foreground"][fg_start : fg_start + fg_count],
            bmode_stats=(float(f["bmode_stats"][0]), float(f["bmode_stats"][1])),
        )

    def _open(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            maps = {}
            for name, (filename, dtype) in _FILES.items():
                path = self.folder / filename
                # An empty file cannot be memory-mapped (a dataset without any SWE has an empty elasto file).
                maps[name] = (
                    np.memmap(path, dtype=dtype, mode="r") if path.stat().st_size else np.empty(0, dtype)
                )
            fg_path = self.folder / _FOREGROUND[0]
            fg = (
                np.memmap(fg_path, dtype=_FOREGROUND[1], mode="r")
                if fg_path.stat().st_size
                else np.empty(0, np.int32)
            )
            maps["foreground"] = fg.reshape(-1, 2)
            self._maps = maps
        return self._maps


def default_cache_root() -> Path:
    """Where ``data.cache.dir`` points by default (data/synthetic.yaml): $TPNET_PREPROCESSED, else
    $TPNET_CACHE/preprocessed, else ./.cache/tpnet/preprocessed."""
    if os.environ.get("TPNET_PREPROCESSED"):
        return Path(os.environ["TPNET_PREPROCESSED"])
    return Path(os.environ.get("TPNET_CACHE", ".cache/tpnet")) / "preprocessed"


def cache_folder(cache_root: Path, spec: DatasetSpec, rows: Sequence[ManifestRow], spacing_mm: float) -> Path:
    safe_name = "".join(c if c.isalnum() or c in "-_." else "_" for c in spec.name) or "dataset"
    return Path(cache_root).expanduser() / f"{safe_name}-{cache_key(spec, rows, spacing_mm)}"


def ensure_preprocessed(
    spec: DatasetSpec,
    rows: Sequence[ManifestRow],
    spacing_mm: float,
    cache_root: Path,
    workers: int | None = None,
    show_progress: bool = True,
) -> PreprocessedFrames:
    """The cache of ``rows`` at ``spacing_mm`` under ``cache_root``: reused when its key matches, else built (in
    ``workers`` processes; None = every core). Safe when several processes (two runs, DDP ranks) call it at once."""
    folder = cache_folder(cache_root, spec, rows, spacing_mm)
    if (folder / INDEX).exists():
        return PreprocessedFrames(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / INDEX).exists():  # another process built it while this one waited
            return PreprocessedFrames(folder)
        # Under the lock nobody else builds this key: any temporary folder left is a killed build's remains.
        for stale in folder.parent.glob(folder.name + ".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        partial = folder.parent / f"{folder.name}.tmp-{os.getpid()}"
        start = time.perf_counter()
        try:
            _build(spec, rows, spacing_mm, partial, folder.name, workers, show_progress)
            os.replace(partial, folder)  # the commit: a complete folder appears at once
        finally:
            shutil.rmtree(partial, ignore_errors=True)
    frames = PreprocessedFrames(folder)
    log.info(
        "preprocessed %d frames at %.4f mm/px into %s (%.1f MiB) in %.1f s",
        len(frames),
        spacing_mm,
        folder,
        frames.size_bytes / 2**20,
        time.perf_counter() - start,
    )
    return frames


def _build(
    spec: DatasetSpec,
    rows: Sequence[ManifestRow],
    spacing_mm: float,
    folder: Path,
    name: str,
    workers: int | None,
    show_progress: bool,
) -> None:
    folder.mkdir(parents=True)
    labels = foreground_labels(spec)
    tasks = [(spec, row, spacing_mm, labels) for row in rows]
    workers = max(1, min(workers or os.cpu_count() or 1, len(rows)))
    handles = {name: (folder / filename).open("wb") for name, (filename, _) in _FILES.items()}
    handles["foreground"] = (folder / _FOREGROUND[0]).open("wb")
    offsets = {"bmode": 0, "elasto": 0, "foreground": 0}
    index_frames = []
    pool = ProcessPoolExecutor(workers) if workers > 1 else None
    try:
        results = pool.map(_preprocess_row, tasks, chunksize=4) if pool else map(_preprocess_row, tasks)
        bar = progress_bar(results, enabled=show_progress, total=len(tasks), desc="preprocess", unit="frame")
        for row, (bmode, elasto, mask, foreground, stats) in zip(rows, bar, strict=True):
            h, w = bmode.shape
            entry = {
                "sample_id": row.sample_id,
                "shape": [h, w],
                "offset": offsets["bmode"],
                "elasto_offset": offsets["elasto"] if elasto is not None else -1,
                "foreground": [offsets["foreground"], int(foreground.shape[0])],
                "bmode_stats": list(stats),
            }
            handles["bmode"].write(bmode.tobytes())
            handles["mask"].write(mask.tobytes())
            offsets["bmode"] += h * w
            if elasto is not None:
                handles["elasto"].write(elasto.tobytes())
                offsets["elasto"] += h * w
            handles["foreground"].write(foreground.tobytes())
            offsets["foreground"] += int(foreground.shape[0])
            index_frames.append(entry)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        for fh in handles.values():
            fh.close()
    index = {
        "format": CACHE_FORMAT,
        "storage": STORAGE,
        "key": name.rsplit("-", 1)[-1],  # the final folder's name is <dataset>-<key>
        "dataset": spec.name,
        "root": str(spec.root),
        "spacing_mm": spacing_mm,
        "foreground_labels": labels,
        "frames": index_frames,
    }
    for fh_path in folder.iterdir():  # data on disk before the index that declares the cache complete
        with fh_path.open("rb") as fh:
            os.fsync(fh.fileno())
    tmp_index = folder / (INDEX + ".partial")
    tmp_index.write_text(json.dumps(index))
    os.replace(tmp_index, folder / INDEX)


def _preprocess_row(
    task: tuple[DatasetSpec, ManifestRow, float, list[int]],
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, tuple[float, float]]:
    """One frame, as training would read it (``load_frame``), in the cache's storage encoding."""
    from tpnet.data.dataset import load_frame  # the one reader training and the cache share

    spec, row, spacing_mm, labels = task
    try:
        frame = load_frame(spec, row, spacing_mm)
    except Exception as exc:
        raise CacheError(f"{row.sample_id}: cannot preprocess frame: {exc}") from exc
    bmode = np.round(np.clip(frame.bmode, 0.0, 1.0) * BMODE_SCALE).astype(np.uint16)
    elasto = None if frame.elasto_kpa is None else frame.elasto_kpa.astype(np.float16)
    ys, xs = np.nonzero(np.isin(frame.mask, np.asarray(labels, np.uint8)))
    foreground = np.stack([ys, xs], axis=1).astype(np.int32)
    # Statistics of the float frame, before quantisation: exactly what the uncached path computes.
    stats = imaged_region_stats(frame.bmode)
    return bmode, elasto, frame.mask.astype(np.uint8), foreground, stats
