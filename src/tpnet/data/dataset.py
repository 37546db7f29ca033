"""PyTorch datasets over the contract: random training patches and full validation frames.

Frames are read lazily (one file read per item), brought to one pixel spacing (the network always sees one
physical scale, as in nnU-Net), augmented, then encoded into channels by ``Encoding``. A DICOM row is one
frame of its file, cropped to the ultrasound image region; its pixel size follows the contract's precedence
(manifest, then the file, then dataset.yaml: ``tpnet.core.contract_frames``), as ``tpnet-data check`` reads it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from tpnet.core.contract import ContractError, DatasetSpec, ManifestRow, resolve_path
from tpnet.core.contract_frames import RowBmode, fit_to_bmode, read_row_bmode, row_spacing
from tpnet.core.dicom import DicomHeader
from tpnet.core.encoding import Encoding, elasto_to_kpa, imaged_region_stats, resample_frame
from tpnet.core.io import read_elasto, read_mask
from tpnet.core.plausibility import stiffness_problem
from tpnet.data.preprocessed import BMODE_SCALE, FrameView, PreprocessedFrames, foreground_labels
from tpnet.data.transforms import Frame, TrainTransform


def frame_spacing_mm(spec: DatasetSpec, row: ManifestRow, header: DicomHeader | None = None) -> float:
    """The row's pixel size: manifest cell, else the DICOM file's calibration (header only, no pixels), else
    dataset.yaml; ValueError naming the sample when none gives one."""
    if row.is_volume:
        from tpnet.data.volumes import volume_pixel_spacing_mm

        return volume_pixel_spacing_mm(spec, row)
    spacing, _ = row_spacing(spec.root, row, spec, header)
    if spacing is None:
        raise ValueError(
            f"{row.sample_id}: no spacing_mm (neither a manifest column, the DICOM file nor dataset.yaml); "
            "set data.spacing_mm and give the dataset a spacing"
        )
    return spacing


def median_spacing_mm(spec: DatasetSpec, rows: Sequence[ManifestRow]) -> float:
    """nnU-Net's choice of target spacing: the median over the training frames."""
    return float(statistics.median(frame_spacing_mm(spec, r) for r in rows))


def load_frame(
    spec: DatasetSpec,
    row: ManifestRow,
    target_spacing_mm: float,
    context_slices: int = 0,
    context_spacing_mm: float | None = None,
) -> Frame:
    """Read one manifest row and resample it to ``target_spacing_mm``; unlabelled rows get an all-zero mask.
    A DICOM row reads only its frame, cropped to the image region; mask and elastography of the full frame's
    size are cropped the same way, ones of the region's size are used as is. A slice of a volume row
    (``tpnet.data.volumes.slice_rows``) comes with ``context_slices`` neighbours on each side; a frame row has
    none to give, so asking for them is an error naming the sample."""
    if row.slice_index is not None:
        from tpnet.data.volumes import load_volume_slice

        return load_volume_slice(spec, row, target_spacing_mm, context_slices, context_spacing_mm)
    if context_slices:
        raise ValueError(
            f"{row.sample_id}: data.context_slices={context_slices} needs sweeps (volume rows, contract "
            "version 2); this row is a single frame"
        )
    bmode = read_row_bmode(resolve_path(spec.root, row.bmode), row.frame)
    elasto = _fitted(read_elasto_kpa(spec, row), "elasto", bmode, row) if row.elasto else None
    if row.mask:
        mask = _fitted(read_mask(resolve_path(spec.root, row.mask)), "mask", bmode, row)
    else:
        mask = np.zeros(bmode.grey.shape, np.uint8)
    spacing = frame_spacing_mm(spec, row, bmode.header)
    grey, elasto, mask = resample_frame(bmode.grey, elasto, mask, spacing, target_spacing_mm)
    return Frame(bmode=grey, elasto_kpa=elasto, mask=mask)


def _load_encoded(spec: DatasetSpec, row: ManifestRow, target_spacing_mm: float, encoding: Encoding) -> Frame:
    """``load_frame`` with the context planes ``encoding`` asks for (a 2.5-D model's neighbours)."""
    return load_frame(spec, row, target_spacing_mm, encoding.context_slices, encoding.context_spacing_mm)


def read_row_mask(spec: DatasetSpec, row: ManifestRow) -> np.ndarray:
    """The row's label map at its own size, unresampled; a slice of a sweep: that slice of its mask volume."""
    if row.slice_index is not None:
        from tpnet.data.volumes import open_row_volume

        return open_row_volume(spec, row, "mask").slice(row.slice_index)
    return read_mask(resolve_path(spec.root, row.mask))


def _fitted(arr: np.ndarray, what: str, bmode: RowBmode, row: ManifestRow) -> np.ndarray:
    try:
        return fit_to_bmode(arr, f"{what} {getattr(row, what)}", bmode)
    except ContractError as exc:
        raise ValueError(f"{row.sample_id}: {exc}") from None


def read_elasto_kpa(spec: DatasetSpec, row: ManifestRow) -> np.ndarray:
    """The row's elastography in kPa, under the rule ``tpnet-data check`` and ``tpnet-infer`` apply: a map
    with Inf, negative or absurd stiffness is refused (training workers and export skip the check)."""
    stored = read_elasto(resolve_path(spec.root, row.elasto), "kPa")  # as stored: the sign comes first
    problem = stiffness_problem(stored, spec.elasto_unit)
    if problem is not None:
        raise ValueError(f"{row.sample_id}: elasto {row.elasto}: {problem}")
    return elasto_to_kpa(stored, spec.elasto_unit)


class PatchSampler(Sampler):
    """Yields ``(index, force_foreground, epoch)``: the first ``ceil(fg_fraction * batch_size)`` items of every
    batch are forced to contain a trigger point (any labelled structure in a dataset without TrP classes), as nnU-Net forces a third of each batch to hold foreground, so
    rare, small TrPs are seen often enough. Wraps any index sampler (random, distributed).

    The epoch travels with each index because the sampler runs in the main process while ``__getitem__`` runs in
    DataLoader workers, whose copies of the dataset (persistent across epochs) never see a ``set_epoch`` call.
    """

    def __init__(self, base: Sampler | Sequence[int], batch_size: int, fg_fraction: float = 0.33) -> None:
        self.base = base
        self.batch_size = batch_size
        self.n_forced = math.ceil(fg_fraction * batch_size) if fg_fraction > 0 else 0
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch here and on the wrapped sampler (a distributed one reshuffles by epoch)."""
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, bool, int]]:
        for position, index in enumerate(self.base):
            yield int(index), (position % self.batch_size) < self.n_forced, self.epoch

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]


class TrainPatchDataset(Dataset):
    """Random ``patch_size`` crops of resampled, augmented frames -> (image [C,h,w] float16, mask [h,w] uint8):
    compact across the worker boundary; the training step converts on the device.

    Frames come from the preprocessed cache (``frames``: memory maps, nothing decoded per item) or, without one,
    from their files (read and resampled per item). With ``raw=True`` (``augment=gpu``) an item is the margin
    crop in physical units plus a seed, and the batch is augmented and encoded on the device
    (``tpnet.data.gpu_augment``).

    All randomness of item ``i`` in epoch ``e`` comes from a generator seeded by (seed, e, i): the data are the
    same whatever the number of workers, and a resumed run sees exactly the batches an uninterrupted one saw.
    Keys are ``index``, ``(index, force_fg)`` (epoch from ``set_epoch``) or ``(index, force_fg, epoch)`` (from
    ``PatchSampler``: the only form that reaches DataLoader workers correctly).
    """

    def __init__(
        self,
        spec: DatasetSpec,
        rows: Sequence[ManifestRow],
        encoding: Encoding,
        target_spacing_mm: float,
        patch_size: Sequence[int],
        transform: TrainTransform | None = None,
        seed: int = 0,
        frames: PreprocessedFrames | None = None,
        raw: bool = False,
    ) -> None:
        self.spec, self.rows, self.encoding = spec, list(rows), encoding
        self.target_spacing_mm = target_spacing_mm
        self.patch_size = (int(patch_size[0]), int(patch_size[1]))
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.raw = raw
        if raw and encoding.context_slices:
            raise ValueError(
                "augment=gpu augments single frames on the device; data.context_slices needs a CPU augment "
                "config (augment=default or ultrasound)"
            )
        if frames is not None:
            missing = [r.sample_id for r in self.rows if r.sample_id not in frames]
            if missing or abs(frames.spacing_mm - target_spacing_mm) > 1e-9:
                raise ValueError(
                    f"preprocessed cache {frames.folder} does not hold these frames at {target_spacing_mm} mm/px "
                    f"(missing {missing[:3]}{'...' if len(missing) > 3 else ''}, cache at {frames.spacing_mm})"
                )
        self.frames = frames
        self.foreground_labels = np.array(foreground_labels(spec), dtype=np.uint8)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, key: int | tuple[int, bool] | tuple[int, bool, int]) -> Any:
        if not isinstance(key, tuple):
            key = (key, False)
        index, force_fg, epoch = key if len(key) == 3 else (*key, self.epoch)
        rng = np.random.default_rng([self.seed, epoch, index])
        row = self.rows[index]
        view = self._view(row)
        # Crop with a margin first so rotation corners come from real tissue, then augment, then crop exactly.
        margin = tuple(int(s * 1.25) for s in self.patch_size)
        frame = view.crop(self._crop_origin(view, margin, force_fg, rng), margin)
        if self.raw:  # augment=gpu: geometry, intensity and encoding happen per batch on the device
            elasto = frame.elasto_kpa if frame.elasto_kpa is not None else np.full(margin, np.nan, np.float32)
            return {
                "bmode": _half(frame.bmode),
                "elasto_kpa": _half(elasto),
                "mask": torch.from_numpy(frame.mask),
                "bmode_stats": torch.tensor(view.bmode_stats(), dtype=torch.float32),
                "seed": torch.tensor(int(rng.integers(2**62)), dtype=torch.int64),
            }
        if self.transform is not None:
            frame = self.transform(frame, rng, out_size=self.patch_size)  # geometry, centre crop, appearance
        else:
            offset = ((margin[0] - self.patch_size[0]) // 2, (margin[1] - self.patch_size[1]) // 2)
            frame = _crop(frame, offset, self.patch_size)
        # B-mode statistics of the whole frame (not the patch): inference normalises whole frames.
        stats = view.bmode_stats() if self.encoding.bmode_norm != "none" else None
        image = self.encoding.encode(frame.bmode, frame.elasto_kpa, stats, frame.context)
        return _half(image), torch.from_numpy(frame.mask.astype(np.uint8))

    def _view(self, row: ManifestRow) -> _Source:
        if self.frames is not None:
            return _Source.cached(self.frames.view(row.sample_id))
        try:
            frame = _load_encoded(self.spec, row, self.target_spacing_mm, self.encoding)
            return _Source.loaded(frame, self.foreground_labels)
        except Exception as exc:
            raise RuntimeError(f"{row.sample_id}: cannot load training frame: {exc}") from exc

    def _crop_origin(
        self, view: _Source, size: tuple[int, int], force_fg: bool, rng: np.random.Generator
    ) -> tuple[int, int]:
        h, w = view.shape
        if force_fg:
            foreground = view.foreground()
            if foreground.shape[0]:
                y, x = foreground[rng.integers(foreground.shape[0])]
                # Centre on a TrP pixel with jitter, so the nodule is not always in the middle.
                cy = int(y) + rng.integers(-size[0] // 4, size[0] // 4 + 1)
                cx = int(x) + rng.integers(-size[1] // 4, size[1] // 4 + 1)
                return int(cy - size[0] // 2), int(cx - size[1] // 2)
        return int(rng.integers(0, max(h - size[0], 0) + 1)), int(rng.integers(0, max(w - size[1], 0) + 1))


class _Source:
    """One frame to crop from: a loaded ``Frame`` (float32) or a cached ``FrameView`` (memory-mapped, stored
    compactly); only the cropped region is converted to float32."""

    def __init__(
        self,
        bmode: np.ndarray,
        bmode_scale: float,
        elasto: np.ndarray | None,
        mask: np.ndarray,
        foreground: Any,
        stats: Any,
        context: np.ndarray | None = None,
    ) -> None:
        self.bmode, self.bmode_scale, self.elasto, self.mask = bmode, bmode_scale, elasto, mask
        self._foreground, self._stats = foreground, stats
        self.context = context  # (2k, H, W) neighbour B-mode of a sweep slice, float32 [0, 1]
        self.shape = mask.shape

    @classmethod
    def cached(cls, view: FrameView) -> _Source:
        return cls(view.bmode, 1.0 / BMODE_SCALE, view.elasto, view.mask, view.foreground, view.bmode_stats)

    @classmethod
    def loaded(cls, frame: Frame, labels: np.ndarray) -> _Source:
        def foreground() -> np.ndarray:
            return np.stack(np.nonzero(np.isin(frame.mask, labels)), axis=1)

        return cls(
            frame.bmode,
            1.0,
            frame.elasto_kpa,
            frame.mask,
            foreground,
            lambda: imaged_region_stats(frame.bmode),
            frame.context,
        )

    def foreground(self) -> np.ndarray:
        return self._foreground() if callable(self._foreground) else self._foreground

    def bmode_stats(self) -> tuple[float, float]:
        return self._stats() if callable(self._stats) else self._stats

    def crop(self, origin: tuple[int, int], size: tuple[int, int]) -> Frame:
        bmode = _crop_array(self.bmode, origin, size, 0).astype(np.float32)
        if self.bmode_scale != 1.0:
            bmode *= np.float32(self.bmode_scale)
        elasto = None
        if self.elasto is not None:
            elasto = _crop_array(self.elasto, origin, size, np.nan)
            if elasto.dtype != np.float32:  # the cache's float16: torch converts ~20x faster than NumPy
                elasto = torch.from_numpy(elasto).float().numpy()
        context = None
        if self.context is not None:
            context = np.stack([_crop_array(plane, origin, size, 0.0) for plane in self.context])
        mask = _crop_array(self.mask, origin, size, 0)
        return Frame(bmode=bmode, elasto_kpa=elasto, mask=mask, context=context)


def _half(array: np.ndarray) -> torch.Tensor:
    """float16 tensor of an array (torch's conversion is vectorised; NumPy's float16 casts are ~20x slower)."""
    return torch.from_numpy(np.ascontiguousarray(array)).half()


def _crop(frame: Frame, origin: tuple[int, int], size: tuple[int, int]) -> Frame:
    """Crop (h, w) at origin (may lie partly outside: padded with B-mode 0, no SWE, background)."""
    return Frame(
        bmode=_crop_array(frame.bmode, origin, size, 0.0),
        elasto_kpa=None if frame.elasto_kpa is None else _crop_array(frame.elasto_kpa, origin, size, np.nan),
        mask=_crop_array(frame.mask, origin, size, 0),
        context=None
        if frame.context is None
        else np.stack([_crop_array(plane, origin, size, 0.0) for plane in frame.context]),
    )


def _crop_array(arr: np.ndarray, origin: tuple[int, int], size: tuple[int, int], fill: Any) -> np.ndarray:
    h, w = arr.shape
    y0, x0 = origin
    out = np.full(size, fill, dtype=arr.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + size[0], h), min(x0 + size[1], w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = arr[sy0:sy1, sx0:sx1]
    return out


class FullFrameDataset(Dataset):
    """Whole resampled frames for validation/evaluation (any size; the caller pads to the network multiple)."""

    def __init__(
        self, spec: DatasetSpec, rows: Sequence[ManifestRow], encoding: Encoding, target_spacing_mm: float
    ) -> None:
        self.spec, self.rows, self.encoding = spec, list(rows), encoding
        self.target_spacing_mm = target_spacing_mm

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        frame = _load_encoded(self.spec, row, self.target_spacing_mm, self.encoding)
        return {
            "image": torch.from_numpy(
                self.encoding.encode(frame.bmode, frame.elasto_kpa, context=frame.context)
            ),
            "mask": torch.from_numpy(frame.mask.astype(np.int64)),
            "elasto_kpa": frame.elasto_kpa,
            "spacing_mm": self.target_spacing_mm,
            "sample_id": row.sample_id,
            "subject_id": row.subject_id,
            # A slice of a sweep: the volume row and the slice, for the 3-D metrics (None for a frame row).
            "volume_id": row.volume_id,
            "slice_index": row.slice_index,
            "slice_spacing_mm": _slice_spacing_mm(self.spec, row),
        }


def _slice_spacing_mm(spec: DatasetSpec, row: ManifestRow) -> float | None:
    """mm between the slices of the sweep a slice row belongs to (None for a frame row)."""
    if row.slice_index is None:
        return None
    from tpnet.data.volumes import open_row_volume

    return float(open_row_volume(spec, row).spacing_mm[0])


def collate_frames(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Full frames differ in size: keep them as a list."""
    return items
