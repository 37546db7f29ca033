"""From the ``data`` config to ready loaders: locate (or generate) the dataset, check it, split by subject,
choose the pixel spacing, build datasets and loaders. Mirrors ``configs/data/``."""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import logging
import statistics
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from tpnet.core.contract import DatasetSpec, ManifestRow, load_manifest, load_spec
from tpnet.core.encoding import Encoding
from tpnet.data.dataset import (
    FullFrameDataset,
    PatchSampler,
    TrainPatchDataset,
    collate_frames,
    median_spacing_mm,
)
from tpnet.data.preprocessed import PreprocessedFrames, ensure_preprocessed
from tpnet.data.sources import (
    PARTIAL_LABEL_MODES,
    UNLABELLED_CODE_BASE,
    RelabelledFrames,
    RelabelledPatches,
    Source,
    label_lut,
    merged_roles,
    run_classes,
    source_name,
    unlabelled_classes,
)
from tpnet.data.splits import split_rows
from tpnet.data.volumes import slice_rows

log = logging.getLogger(__name__)

DEFAULT_FG_FRACTION = 0.33  # nnU-Net: a third of every batch holds foreground


@dataclass
class DataSetup:
    spec: DatasetSpec
    splits: dict[str, list[ManifestRow]]
    encoding: Encoding
    spacing_mm: float
    fingerprint: str
    labelled: list[ManifestRow] = field(default_factory=list)  # every labelled row, manifest order
    # data.sources (tpnet.data.sources): the datasets of a multi-source run, the first one primary (planning and
    # label checks read it). Empty for one dataset. With sources, ``spec`` is the run's (merged classes and
    # roles; root and units of the primary), ``splits`` / ``labelled`` concatenate the sources' rows in order.
    sources: list[Source] = field(default_factory=list)

    @property
    def primary(self) -> DataSetup:
        """The set-up planning and label checks read: the first source's, or this one."""
        return self.sources[0].setup if self.sources else self


def dataset_root(data_cfg: Any) -> Path:
    """``data.root`` if given, else the embedded synthetic dataset (generated once into the cache)."""
    if data_cfg.get("root"):
        return Path(data_cfg.root).expanduser()
    from tpnet.data.synth import ensure_synthetic_dataset

    s = data_cfg.synthetic
    return ensure_synthetic_dataset(
        Path(s.cache_dir).expanduser(),
        subjects=int(s.subjects),
        frames_per_subject=int(s.frames_per_subject),
        seed=int(s.seed),
        height=int(s.height),
        width=int(s.width),
        appearance=str(s.get("appearance", "literature")),
        active_stiffness_factor=float(s.get("active_stiffness_factor", 1.0)),
        active_echo_db=float(s.get("active_echo_db", 0.0)),
    )


def manifest_fingerprint(root: Path) -> str:
    return hashlib.sha256((root / "manifest.csv").read_bytes()).hexdigest()[:16]


def setup_data(
    data_cfg: Any, seed: int, fold: int | None = None, folds: int | None = None, check: bool = True
) -> DataSetup:
    if data_cfg.get("sources"):
        return _setup_sources(data_cfg, seed, fold, folds, check)
    root = dataset_root(data_cfg)
    if check:
        from tpnet.data.check import check_or_raise

        check_or_raise(root)  # refuses a dataset with errors, listing every one of them
    spec = load_spec(root)
    rows = slice_rows(spec, load_manifest(root))  # a sweep (contract v2 volume row) is one row per slice
    labelled = [r for r in rows if r.mask]
    if len(labelled) < len(rows):
        log.warning(
            "%d of %d frames are unlabelled (no mask) and are not used for training",
            len(rows) - len(labelled),
            len(rows),
        )
    splits = split_rows(
        labelled,
        seed=seed,
        val_fraction=float(data_cfg.val_fraction),
        test_fraction=float(data_cfg.test_fraction),
        folds=folds if fold is not None else None,
        fold=fold,
    )
    spacing = data_cfg.get("spacing_mm")
    # The median over every non-test frame, not the fold's train split: every CV fold (and the plain split,
    # whose test subjects are the same) resamples to one spacing. Training's plan replaces it anyway.
    non_test = [*splits["train"], *splits["val"]]
    spacing_mm = float(spacing) if spacing else median_spacing_mm(spec, non_test)
    encoding = context_spacing_planned(encoding_from_config(data_cfg), spec, non_test)
    # Debug only: training prints the data line after planning (the planned spacing may replace this one).
    log.debug(
        "dataset %s at %s: %s frames (train/val/test), median spacing %.4f mm/px",
        spec.name,
        root,
        "/".join(str(len(splits[k])) for k in ("train", "val", "test")),
        spacing_mm,
    )
    return DataSetup(spec, splits, encoding, spacing_mm, manifest_fingerprint(root), labelled)


def _setup_sources(data_cfg: Any, seed: int, fold: int | None, folds: int | None, check: bool) -> DataSetup:
    """``data.sources``: each dataset set up (checked, split by its own subjects) on its own, then merged."""
    from omegaconf import OmegaConf

    mode = str(data_cfg.get("partial_labels") or "marginal")
    if mode not in PARTIAL_LABEL_MODES:
        raise ValueError(f"data.partial_labels={mode!r}: expected one of {list(PARTIAL_LABEL_MODES)}")
    singles = []
    for index, entry in enumerate(data_cfg.sources):
        if not entry.get("root"):
            raise ValueError(f"data.sources[{index}] needs a root (a contract dataset folder)")
        one = OmegaConf.merge(data_cfg, {"root": str(entry.root), "sources": None})
        singles.append((entry, setup_data(one, seed, fold, folds, check)))
    specs = [single.spec for _, single in singles]
    classes = run_classes(specs, data_cfg.get("classes"))
    sources = []
    for index, (entry, single) in enumerate(singles):
        name = source_name(entry.get("name"), single.spec, index)
        if name in {s.name for s in sources}:
            raise ValueError(f"data.sources[{index}]: name {name!r} is used twice; give each source a name")
        weight = float(entry.get("weight", 1.0) if entry.get("weight") is not None else 1.0)
        if not weight > 0:
            raise ValueError(f"data.sources[{index}] ({name}): weight must be > 0; got {weight}")
        unlabelled = unlabelled_classes(single.spec.classes, classes)
        code = UNLABELLED_CODE_BASE + index if mode == "marginal" and unlabelled else None
        lut = label_lut(single.spec.classes, classes, f"data.sources[{index}] ({name})")
        sources.append(Source(name, single, weight, lut, unlabelled, code))
        log.info(
            "source %s: %s, weight %g, unlabelled here: %s", name, single.spec.root, weight,
            [classes[k] for k in unlabelled] or "none",
        )  # fmt: skip
    primary = sources[0].setup
    spec = dataclasses.replace(
        primary.spec,
        name="+".join(s.name for s in sources),
        classes=classes,
        roles=merged_roles(specs, classes),
        synthetic=all(s.spec.synthetic for s in sources),
    )
    splits = {split: [r for s in sources for r in s.setup.splits[split]] for split in primary.splits}
    fingerprint = hashlib.sha256(
        repr([(s.name, s.weight, s.setup.fingerprint, mode) for s in sources]).encode()
    ).hexdigest()[:16]
    return DataSetup(
        spec, splits, primary.encoding, primary.spacing_mm, fingerprint,
        [r for s in sources for r in s.setup.labelled], sources,
    )  # fmt: skip


def encoding_from_config(data_cfg: Any) -> Encoding:
    """The channel encoding the ``data`` config asks for."""
    return Encoding(
        channels=tuple(data_cfg.channels),
        kpa_scale=float(data_cfg.kpa_scale),
        kpa_clip=float(data_cfg.kpa_clip),
        # null = not planned yet (training's plan fills it in); checkpoints from before the key: "none".
        bmode_norm=str(data_cfg.get("bmode_norm") or "none"),
        context_slices=int(data_cfg.get("context_slices") or 0),
        context_spacing_mm=None
        if data_cfg.get("context_spacing_mm") is None
        else float(data_cfg.context_spacing_mm),
    )


def context_spacing_planned(encoding: Encoding, spec: DatasetSpec, rows: list[ManifestRow]) -> Encoding:
    """With context slices and no ``data.context_spacing_mm``: the median slice spacing of the sweeps in ``rows``
    (every fold's non-test rows, as the pixel spacing is planned), so the network learns one physical offset
    between planes and a model file states it; ``encoding`` as it is otherwise."""
    if not encoding.context_slices or encoding.context_spacing_mm is not None:
        return encoding
    from tpnet.data.volumes import open_row_volume

    spacings = {
        r.volume_id: open_row_volume(spec, r).spacing_mm[0] for r in rows if r.slice_index is not None
    }
    if not spacings:
        return encoding
    return dataclasses.replace(encoding, context_spacing_mm=float(statistics.median(spacings.values())))


def train_loader(
    setup: DataSetup,
    data_cfg: Any,
    transform: Any,
    sampler: Any,
    seed: int,
    device: torch.device,
) -> DataLoader:
    """Patches for one rank; call ``loader.sampler.set_epoch(epoch)`` before each epoch (the epoch then reaches
    the workers with every index, see ``PatchSampler``). ``transform``: a CPU ``TrainTransform`` (run in the
    workers), an on-device one (``augment=gpu``: the workers deliver raw crops, the training step augments each
    batch on the device), or None."""
    on_device = bool(getattr(transform, "on_device", False))

    def patches(one: DataSetup) -> TrainPatchDataset:
        return TrainPatchDataset(
            one.spec,
            one.splits["train"],
            setup.encoding,
            setup.spacing_mm,
            data_cfg.patch_size,
            None if on_device else transform,
            seed,
            frames=preprocessed_frames(one, data_cfg, setup.spacing_mm),
            raw=on_device,
        )

    if setup.sources:  # one dataset per source, masks relabelled; indices follow the concatenated train rows
        dataset: Any = _OffsetConcat([RelabelledPatches(patches(s.setup), s) for s in setup.sources])
    else:
        dataset = patches(setup)
    batch_size = int(data_cfg.batch_size)
    workers = int(data_cfg.num_workers)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=PatchSampler(sampler, batch_size, _fg_fraction(data_cfg)),
        num_workers=workers,
        # Pinned batches let the step's non_blocking copies overlap the previous step's compute.
        pin_memory=device.type == "cuda",
        # Full batches only (BatchNorm statistics), unless the epoch holds less than one batch: a small dataset
        # (e.g. 3 training frames, batch 4) must still train, not run empty epochs.
        drop_last=len(sampler) >= batch_size,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader


def preprocessed_frames(
    setup: DataSetup, data_cfg: Any, spacing_mm: float | None = None
) -> PreprocessedFrames | None:
    """The preprocessed cache of every labelled frame at the run's spacing (``spacing_mm``, default the
    set-up's; built on first use), or None when ``data.cache.enabled`` is false (frames are then read and
    resampled per item)."""
    cache_cfg = getattr(data_cfg, "cache", None)
    if cache_cfg is None or not cache_cfg.enabled:
        return None
    if int(getattr(data_cfg, "context_slices", 0) or 0):
        # The cache holds single resampled frames; 2.5-D items read their neighbours from the volume files
        # (memory-mapped .npy, slice-wise NIfTI): one slice read per neighbour.
        log.info("data.context_slices > 0: frames are read from the volume files, not the preprocessed cache")
        return None
    rows = setup.labelled or [r for split in ("train", "val", "test") for r in setup.splits.get(split, [])]
    workers = getattr(cache_cfg, "workers", None)
    return ensure_preprocessed(
        setup.spec,
        rows,
        setup.spacing_mm if spacing_mm is None else spacing_mm,
        Path(str(cache_cfg.dir)),
        workers=int(workers) if workers else None,
    )


def _fg_fraction(data_cfg: Any) -> float:
    """``data.fg_fraction``; null (not planned: a caller that composes the config without training's plan)
    is nnU-Net's third, the plan's default too."""
    value = getattr(data_cfg, "fg_fraction", None)
    return DEFAULT_FG_FRACTION if value is None else float(value)


def frame_dataset(setup: DataSetup, split: str) -> Dataset:
    """Full frames of one split (every source's, relabelled, in source order)."""
    if setup.sources:
        return ConcatDataset(
            [
                RelabelledFrames(
                    FullFrameDataset(s.spec, s.setup.splits[split], setup.encoding, setup.spacing_mm), s
                )
                for s in setup.sources
            ]
        )
    return FullFrameDataset(setup.spec, setup.splits[split], setup.encoding, setup.spacing_mm)


class _OffsetConcat(ConcatDataset):
    """ConcatDataset whose keys may be tuples ``(index, force_fg, epoch)`` (PatchSampler's): the index is
    mapped to its source's dataset, the rest passed on."""

    def __getitem__(self, key: Any) -> Any:
        index, rest = (key[0], tuple(key[1:])) if isinstance(key, tuple) else (key, ())
        part = bisect.bisect_right(self.cumulative_sizes, index)
        local = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self.datasets[part][(local, *rest) if rest else local]


def frame_loader(dataset: FullFrameDataset, indices: list[int], workers: int) -> DataLoader:
    return DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=1,
        num_workers=min(workers, 2),
        collate_fn=collate_frames,
    )


def iter_frames(loader: Iterable[list[dict]]) -> Iterator[dict]:
    """One frame dict at a time from a ``frame_loader`` (its batches are lists of frames of any size)."""
    for batch in loader:
        yield from batch


def split_frames(setup: DataSetup, split: str, workers: int) -> Iterator[dict]:
    """Every full frame of one split, in manifest order (evaluation and calibration)."""
    dataset = frame_dataset(setup, split)
    return iter_frames(frame_loader(dataset, list(range(len(dataset))), workers))
