"""Training on several contract datasets whose label sets differ (issue #16, ``data.sources``).

Real trigger-point sets rarely label nerves; regional-anaesthesia sets label nerves and vessels but no trigger
points. One network learns from all of them:

1. The run's classes are the sources' classes merged by name, background first (or ``data.classes``); each
   source's mask values are mapped onto them (``label_lut``).
2. A run class a source does not label is *unknown* there, not background: on that source's frames a pixel the
   source calls background may be one of them. With ``data.partial_labels: marginal`` the training masks mark
   such pixels with the source's code (``UNLABELLED_CODE_BASE + s``) and ``tpnet.training.losses.MarginalLoss``
   scores them against the merged probability "background or one of the unknown classes" (the marginal loss of
   Shi et al. 2021). ``background`` treats them as background (the naive baseline the README compares with).
3. Validation frames keep their source's background as 0 and carry ``unlabelled_classes``: evaluation scores
   each frame only on the classes its source labels (``tpnet.evaluation.evaluate._without_unlabelled``).
4. Each source gets a share of the training samples by its ``weight`` (``sample_weights``), whatever its size.

Sample and subject ids are prefixed with the source's name ("<source>/<id>"): two sources may both have a
"subject 1", and they are different people to the subject bootstrap.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tpnet.core.contract import BACKGROUND, ClassRoles, DatasetSpec, default_roles

# Mask values UNLABELLED_CODE_BASE + s (s = source index) mean "background, or a class source s does not label".
# Below the ignore index (255) and far above any class index; at most 127 - 1 sources.
UNLABELLED_CODE_BASE = 128
IGNORE_INDEX = 255
PARTIAL_LABEL_MODES: tuple[str, ...] = ("marginal", "background")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Source:
    """One dataset of a multi-source run: its own set-up (spec, splits) and how its labels map onto the run's."""

    name: str
    setup: Any  # tpnet.data.datamodule.DataSetup of this dataset alone (its spec, splits, fingerprint)
    weight: float
    label_lut: np.ndarray  # (256,) uint8: source mask value -> run class (IGNORE_INDEX: not a run class)
    unlabelled: tuple[int, ...]  # run class indices this source does not label
    code: int | None  # training mask value of its "background or unlabelled" pixels; None: plain background

    @property
    def spec(self) -> DatasetSpec:
        return self.setup.spec

    @functools.cached_property
    def training_lut(self) -> np.ndarray:
        """``label_lut`` with the source's code on its background (partial labels), for the training masks."""
        lut = self.label_lut.copy()
        if self.code is not None:
            lut[0] = self.code
        return lut

    @functools.cached_property
    def metrics_lut(self) -> np.ndarray:
        """``label_lut`` for evaluation masks: metrics need class indices, so a class the run lacks is background."""
        return np.where(self.label_lut == IGNORE_INDEX, 0, self.label_lut).astype(np.uint8)


def source_name(raw: Any, spec: DatasetSpec, index: int) -> str:
    """The name metrics use (``val/<name>/...``): the configured one, else the dataset's, made safe for MLflow."""
    name = _SAFE_NAME.sub("_", str(raw if raw else spec.name)).strip("_.") or f"source{index}"
    return name


def run_classes(specs: Sequence[DatasetSpec], configured: Sequence[str] | None = None) -> tuple[str, ...]:
    """``configured`` (background first), else the union of the sources' classes in order of first mention.
    Every source's background must be the run's background: it is the one class every source labels."""
    if configured:
        classes = tuple(str(c) for c in configured)
    else:
        seen: list[str] = []
        for spec in specs:
            seen.extend(c for c in spec.classes[1:] if c not in seen)
        classes = (BACKGROUND, *seen)
    if len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"data.classes {list(classes)}: need at least two unique class names")
    return classes


def merged_roles(specs: Sequence[DatasetSpec], classes: Sequence[str]) -> ClassRoles:
    """A class is a TrP (critical) when any source says so; the naming rule for classes no source declares."""
    trp = {c for spec in specs for c in spec.class_roles.trp}
    critical = {c for spec in specs for c in spec.class_roles.critical}
    rule = default_roles(classes)
    trp |= {c for c in rule.trp if c not in critical}
    critical |= {c for c in rule.critical if c not in trp}
    both = sorted(trp & critical)
    if both:
        raise ValueError(f"sources disagree: {both} is a trigger point in one source and critical in another")
    return ClassRoles(
        trp=tuple(c for c in classes if c in trp), critical=tuple(c for c in classes if c in critical)
    )


def label_lut(source_classes: Sequence[str], classes: Sequence[str], where: str) -> np.ndarray:
    """(256,) lookup table: source mask value -> run class index. A source class the run does not have is
    ignored (IGNORE_INDEX: no loss, no metric); the source's background (index 0) is the run's background."""
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[0] = 0
    for index, name in enumerate(source_classes[1:], start=1):
        if name in classes:
            lut[index] = classes.index(name)
    unmapped = [c for c in source_classes[1:] if c not in classes]
    if len(unmapped) == len(source_classes) - 1:
        raise ValueError(
            f"{where}: none of its classes {list(source_classes)} is a run class {list(classes)}"
        )
    return lut


def unlabelled_classes(source_classes: Sequence[str], classes: Sequence[str]) -> tuple[int, ...]:
    """Run classes (not background) the source does not label."""
    return tuple(i for i, name in enumerate(classes) if i > 0 and name not in source_classes)


def partial_label_table(sources: Sequence[Source]) -> dict[int, tuple[int, ...]]:
    """Mask code -> the run classes it may be (background + the source's unlabelled ones), for MarginalLoss."""
    return {s.code: (0, *s.unlabelled) for s in sources if s.code is not None}


def sample_weights(sources: Sequence[Source], split: str = "train") -> np.ndarray:
    """Per training frame (sources concatenated in order): the probability of drawing it, so that source s gets
    weight_s / sum(weights) of the samples and its frames share that equally."""
    sizes = [len(s.setup.splits[split]) for s in sources]
    total_weight = sum(s.weight for s, n in zip(sources, sizes, strict=True) if n)
    parts = [np.full(n, s.weight / total_weight / n) for s, n in zip(sources, sizes, strict=True) if n]
    return np.concatenate(parts) if parts else np.zeros(0)


def _relabel(mask: np.ndarray | torch.Tensor, source: Source, training: bool) -> Any:
    """The source's mask in run classes; with ``training`` its background pixels carry the source's code."""
    # Tables made once per source (not per item: this runs in the loader workers for every patch).
    lut = source.training_lut if training else source.metrics_lut
    if isinstance(mask, torch.Tensor):
        out = torch.from_numpy(lut[mask.numpy()])  # NumPy's table lookup: no int64 copy of the mask
        return out.to(mask.dtype) if mask.dtype != torch.uint8 else out
    return lut[mask]


class RelabelledPatches(Dataset):
    """A source's ``TrainPatchDataset``: the same items with the mask in run classes (+ its code)."""

    def __init__(self, patches: Dataset, source: Source) -> None:
        self.patches, self.source = patches, source

    def __len__(self) -> int:
        return len(self.patches)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        item = self.patches[key]
        if isinstance(item, dict):  # augment=gpu's raw crops
            return {**item, "mask": _relabel(item["mask"], self.source, training=True)}
        image, mask = item
        return image, _relabel(mask, self.source, training=True)


class RelabelledFrames(Dataset):
    """A source's ``FullFrameDataset``: masks in run classes, ids prefixed with the source, and the classes the
    source does not label (evaluation leaves them out); with partial labels also ``loss_mask``, the mask as
    the training loss reads it (the source's code on its background), for the validation loss."""

    def __init__(self, frames: Dataset, source: Source) -> None:
        self.frames, self.source = frames, source

    def __len__(self) -> int:
        return len(self.frames)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        frame = self.frames[index]
        name = self.source.name
        out = {
            **frame,
            "mask": _relabel(frame["mask"], self.source, training=False),
            "sample_id": f"{name}/{frame['sample_id']}",
            "subject_id": f"{name}/{frame['subject_id']}",
            "source": name,
            "unlabelled_classes": self.source.unlabelled,
        }
        if self.source.code is not None:  # val/loss scores it as training does: background or unknown there
            out["loss_mask"] = _relabel(frame["mask"], self.source, training=True)
        return out
