"""What ``tpnet-data check`` reads from a row's labels and stiffness, for a frame (check.py) and a sweep
(check_volume.py) alike: labels outside the classes, and the statistics of an entirely usable row (class pixels,
trigger points counted, stiffness histograms per class) that the dataset summary adds up."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tpnet.core.contract import DatasetSpec, is_trp_class
from tpnet.core.plausibility import STIFFNESS_KPA_RANGE

MAX_STIFFNESS_KPA = STIFFNESS_KPA_RANGE[1]  # the summary's histogram covers every stiffness the check accepts
STIFFNESS_BIN_KPA = 0.5  # percentiles come from a fixed histogram, so memory does not grow with the data
STIFFNESS_BINS = int(MAX_STIFFNESS_KPA / STIFFNESS_BIN_KPA)


def histogram(kpa: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(kpa, bins=STIFFNESS_BINS, range=(0.0, MAX_STIFFNESS_KPA))
    return counts


def label_counts(mask: np.ndarray, classes: tuple[str, ...]) -> tuple[np.ndarray, str | None]:
    """(pixel count per label value 0..255, the problem when a label lies outside the classes, else None)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    labels = np.flatnonzero(counts)
    outside = labels[labels >= len(classes)]
    if not outside.size:
        return counts, None
    return counts, (
        f"mask labels {outside.tolist()} outside classes 0..{len(classes) - 1} {list(classes)} (dataset.yaml)"
    )


def fill_statistics(
    result: object,
    spec: DatasetSpec,
    mask: np.ndarray | None,
    counts: np.ndarray | None,
    elasto_kpa: np.ndarray | None,
    count_objects: Callable[[np.ndarray], int],
) -> None:
    """A usable row's statistics into ``result`` (check.py's ``_FrameResult``); ``count_objects``: how many
    trigger points one class's binary mask holds (8-connected in a frame, 26-connected in a sweep)."""
    result.has_swe = elasto_kpa is not None and bool(np.isfinite(elasto_kpa).any())
    result.labelled = mask is not None
    if mask is not None and counts is not None:
        result.class_pixels = counts[: len(spec.classes)]
        for index, name in enumerate(spec.classes):
            if is_trp_class(name, spec.class_roles) and result.class_pixels[index]:
                result.trp_components[name] = count_objects(mask == index)
    if result.has_swe:
        valid = np.isfinite(elasto_kpa)
        result.stiffness_hist["all"] = histogram(elasto_kpa[valid])
        if mask is not None:
            for index, name in enumerate(spec.classes):
                in_class = valid & (mask == index)
                if in_class.any():
                    result.stiffness_hist[name] = histogram(elasto_kpa[in_class])
