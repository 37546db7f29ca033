"""Is this frame like the ones the model was trained on? Named per-frame warnings (issue #14).

SHARED by training (which stores ``input_reference`` in the model card at the end of training) and
``tpnet-infer`` (which compares every frame with it). numpy + OpenCV + standard library only.

Warnings are ``FrameWarning(code, message)``; the codes (``WARNING_CODES``):

- ``missing_modality``: the model reads elastography channels, the frame has no SWE signal at all; its
  detections rest on the B-mode alone and no stiffness is reported.
- ``pixel_size_assumed``: no pixel size was read for the frame; the network reads it at the model's training
  spacing and every millimetre figure is left empty.
- ``intensity_unlike_training``: the frame's B-mode channel, as the network sees it, is far from the training
  frames' (the statistic test below).
- ``spacing_implausible``, ``field_of_view_implausible``, ``spacing_far_from_training``: the pixel-size rules
  of ``tpnet.core.plausibility``, one code each.

The statistic test. Both statistics are computed on the network's own B-mode input plane (after the model's
``bmode_norm``, at the model's spacing, over the imaged region: pixels the encoding left at exactly 0 - sector
corners, padding - are not tissue):

1. Intensity distribution: the frame's quantile function at ``QUANTILE_LEVELS``. The training reference is the
   mean of the training frames' quantile functions (the 1-D Wasserstein barycentre: a pooled "typical"
   histogram), and a frame's distance to it is the mean absolute quantile difference (the 1-D Wasserstein-1
   distance, approximated on the levels) divided by the reference's interquartile range, so it reads as "IQRs
   of shift". Gain, dynamic range and a different tissue mix all move it.
2. Speckle texture: the median over imaged pixels of local SD (``SPECKLE_WINDOW_PX`` square window) divided by
   the frame's SD. Fully developed speckle keeps a fixed local contrast whatever the gain; a smooth screenshot,
   text or a rescaled image does not. Distance = |statistic - training median|. (A local mean/SD ratio is the
   textbook speckle SNR, but it is undefined on a z-scored plane whose mean is 0; the SD ratio is invariant to
   gain and offset, so it means the same for every ``bmode_norm``.)

The alarm threshold of each statistic comes from the training frames themselves: the 99th percentile of their
distances (leave-one-out for the quantile reference, so a frame is not compared with itself) times
``THRESHOLD_MARGIN``. A frame beyond either threshold gets ``intensity_unlike_training``. By construction about
1 % of training frames lie beyond the 99th percentile; the margin leaves room for new subjects of the same
distribution. The measured false-alarm rate is in the README.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from tpnet.core.plausibility import field_of_view_warning, spacing_range_warning, training_spacing_warning

MISSING_MODALITY = "missing_modality"
PIXEL_SIZE_ASSUMED = "pixel_size_assumed"
INTENSITY_UNLIKE_TRAINING = "intensity_unlike_training"
SPACING_IMPLAUSIBLE = "spacing_implausible"
FIELD_OF_VIEW_IMPLAUSIBLE = "field_of_view_implausible"
SPACING_FAR_FROM_TRAINING = "spacing_far_from_training"
WARNING_CODES: tuple[str, ...] = (
    MISSING_MODALITY,
    PIXEL_SIZE_ASSUMED,
    INTENSITY_UNLIKE_TRAINING,
    SPACING_IMPLAUSIBLE,
    FIELD_OF_VIEW_IMPLAUSIBLE,
    SPACING_FAR_FROM_TRAINING,
)

REFERENCE_VERSION = 1
QUANTILE_LEVELS: tuple[float, ...] = tuple(round(0.02 * i, 2) for i in range(1, 50))  # 0.02 ... 0.98
# ~1 mm at the usual 0.2 mm model spacing: a few speckle grains (0.2-0.6 mm, ultrasound-facts.md) per window.
SPECKLE_WINDOW_PX = 5
THRESHOLD_MARGIN = 1.5  # x the training frames' 99th-percentile distance (assumption, see the module doc)
THRESHOLD_PERCENTILE = 99.0
MIN_IMAGED_PIXELS = 256  # fewer imaged pixels: no statistic (a tiny crop says nothing about its histogram)
_DIGITS = 5  # significant digits kept in the JSON reference (it stays < 5 kB)


@dataclass(frozen=True)
class FrameWarning:
    code: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class FrameStatistics:
    """A frame's B-mode input plane summarised: its quantiles at ``QUANTILE_LEVELS`` and its speckle contrast."""

    quantiles: np.ndarray
    speckle: float


def frame_statistics(bmode_plane: np.ndarray) -> FrameStatistics | None:
    """The statistics of one (H, W) network B-mode plane; None when too little of it is imaged."""
    plane = np.asarray(bmode_plane, dtype=np.float32)
    imaged = plane != 0.0  # the encoding leaves non-imaged pixels at exactly 0 (see the module doc)
    values = plane[imaged]
    if values.size < MIN_IMAGED_PIXELS:
        return None
    quantiles = np.quantile(values, QUANTILE_LEVELS).astype(np.float64)
    spread = float(values.std())
    if spread <= 0:
        return FrameStatistics(quantiles, 0.0)
    window = (SPECKLE_WINDOW_PX, SPECKLE_WINDOW_PX)
    mean = cv2.blur(plane, window, borderType=cv2.BORDER_REFLECT)
    mean_sq = cv2.blur(plane * plane, window, borderType=cv2.BORDER_REFLECT)
    local_sd = np.sqrt(np.clip(mean_sq - mean * mean, 0.0, None))
    # Only windows wholly inside the imaged region: a window across the sector edge measures the edge.
    inside = cv2.erode(imaged.astype(np.uint8), np.ones(window, np.uint8)).astype(bool)
    if np.count_nonzero(inside) < MIN_IMAGED_PIXELS // 4:
        inside = imaged
    return FrameStatistics(quantiles, float(np.median(local_sd[inside])) / spread)


def input_reference(encoded_images: Iterable[np.ndarray], channels: Sequence[str]) -> dict:
    """Summary statistics of the training inputs that ``tpnet-infer`` compares each frame with (JSON numbers).

    ``encoded_images``: the training split's whole frames as the network saw them, (C, H, W) float32 at the
    model's spacing, channel order ``channels`` (B-mode first). Empty input gives ``{}`` (no test)."""
    channels = list(channels)
    swe_index = channels.index("elasto_valid") if "elasto_valid" in channels else None
    quantiles, speckle = [], []
    frames = with_swe = 0
    for image in encoded_images:
        image = np.asarray(image)
        frames += 1
        if swe_index is not None and np.any(image[swe_index] > 0):
            with_swe += 1
        stats = frame_statistics(image[0])
        if stats is not None:
            quantiles.append(stats.quantiles)
            speckle.append(stats.speckle)
    if len(quantiles) < 2:
        return {}
    q = np.stack(quantiles)
    n = len(q)
    reference_q = q.mean(axis=0)
    scale = _quantile_scale(reference_q)
    # Leave-one-out: each training frame against the barycentre of the others.
    loo = (n * reference_q[None, :] - q) / (n - 1)
    q_distances = np.abs(q - loo).mean(axis=1) / scale
    s = np.asarray(speckle)
    s_median = float(np.median(s))
    s_distances = np.abs(s - s_median)
    return {
        "version": REFERENCE_VERSION,
        "n_frames": n,
        "channels": channels,
        "swe_frame_fraction": None if swe_index is None else _round(with_swe / frames),
        "threshold_rule": f"{THRESHOLD_PERCENTILE:g}th percentile of the training frames' distances "
        f"x {THRESHOLD_MARGIN:g}",
        "intensity": {
            "quantile_levels": list(QUANTILE_LEVELS),
            "quantiles": [_round(v) for v in reference_q],
            "scale": _round(scale),
            "distances": _percentiles(q_distances),
            "threshold": _round(_threshold(q_distances)),
        },
        "speckle": {
            "window_px": SPECKLE_WINDOW_PX,
            "median": _round(s_median),
            "range": [_round(float(s.min())), _round(float(s.max()))],
            "distances": _percentiles(s_distances),
            "threshold": _round(_threshold(s_distances)),
        },
    }


def _quantile_scale(quantiles: np.ndarray) -> float:
    """The reference's interquartile range (levels 0.24-0.76 as the nearest stored ones), floored."""
    levels = np.asarray(QUANTILE_LEVELS)
    low, high = int(np.argmin(np.abs(levels - 0.25))), int(np.argmin(np.abs(levels - 0.75)))
    return max(float(quantiles[high] - quantiles[low]), 1e-3)


def _threshold(distances: np.ndarray) -> float:
    return float(np.percentile(distances, THRESHOLD_PERCENTILE)) * THRESHOLD_MARGIN


def _percentiles(distances: np.ndarray) -> dict[str, float]:
    return {
        f"p{p:g}": _round(float(np.percentile(distances, p))) for p in (50, 90, 95, THRESHOLD_PERCENTILE)
    } | {"max": _round(float(distances.max()))}


def _round(value: float) -> float:
    return float(f"{float(value):.{_DIGITS}g}")


def usable_reference(reference: Mapping | None) -> bool:
    """Whether a model card's ``input_reference`` holds this version's statistic test."""
    return (
        isinstance(reference, Mapping)
        and reference.get("version") == REFERENCE_VERSION
        and isinstance(reference.get("intensity"), Mapping)
        and isinstance(reference.get("speckle"), Mapping)
    )


def intensity_distances(stats: FrameStatistics, reference: Mapping) -> tuple[float, float]:
    """(quantile distance, speckle distance) of a frame to ``reference`` (``input_reference``'s dict)."""
    intensity, speckle = reference["intensity"], reference["speckle"]
    reference_q = np.asarray(intensity["quantiles"], dtype=np.float64)
    q_distance = float(np.abs(stats.quantiles - reference_q).mean()) / float(intensity["scale"])
    return q_distance, abs(stats.speckle - float(speckle["median"]))


def intensity_warning(stats: FrameStatistics | None, reference: Mapping) -> FrameWarning | None:
    """``intensity_unlike_training`` when either distance exceeds its threshold (None when both are within,
    or when the frame has too little imaged area to say)."""
    if stats is None:
        return None
    q_distance, s_distance = intensity_distances(stats, reference)
    q_limit, s_limit = float(reference["intensity"]["threshold"]), float(reference["speckle"]["threshold"])
    reasons = []
    if q_distance > q_limit:
        reasons.append(
            f"its grey-level distribution is {q_distance:.3g} IQR from the training frames' "
            f"(alarm above {q_limit:.3g})"
        )
    if s_distance > s_limit:
        reasons.append(
            f"its speckle contrast is {stats.speckle:.3g} against the training median "
            f"{float(reference['speckle']['median']):.3g} (alarm beyond +-{s_limit:.3g})"
        )
    if not reasons:
        return None
    return FrameWarning(
        INTENSITY_UNLIKE_TRAINING,
        "image statistics unlike the model's training frames: " + "; ".join(reasons)
        + "; the model may not apply to this image",
    )  # fmt: skip


def spacing_warnings(
    spacing_mm: float, shape: Sequence[int] | None, training_spacing_mm: float | None, assumed: bool = False
) -> list[FrameWarning]:
    """The pixel-size rules of ``tpnet.core.plausibility`` as coded warnings. ``assumed``: ``spacing_mm`` is
    the model's own, assumed for a frame without one (only the field of view can then be judged)."""
    found = []
    if not assumed:
        found.append((SPACING_IMPLAUSIBLE, spacing_range_warning(spacing_mm)))
    if shape is not None:
        fov = field_of_view_warning(spacing_mm, shape)
        if fov is not None and assumed:
            fov = f"at the assumed {spacing_mm:g} mm/pixel, {fov}"
        found.append((FIELD_OF_VIEW_IMPLAUSIBLE, fov))
    if training_spacing_mm is not None and not assumed:
        found.append(
            (
                SPACING_FAR_FROM_TRAINING,
                training_spacing_warning(spacing_mm, training_spacing_mm, "the model's training spacing"),
            )
        )
    return [FrameWarning(code, message) for code, message in found if message is not None]


def frame_warnings(
    *,
    spacing_mm: float | None,
    model_spacing_mm: float,
    shape: Sequence[int],
    has_swe: bool,
    channels: Sequence[str],
    statistics: FrameStatistics | None,
    reference: Mapping | None,
) -> list[FrameWarning]:
    """Every named warning for one frame, in ``WARNING_CODES`` order. ``spacing_mm``: the frame's own (None:
    unknown); ``shape``: (H, W) of what the network sees, at the frame's pixels; ``reference``: the model card's
    ``input_reference`` (None or unusable: the statistic test is skipped; the caller says so once per run)."""
    found: list[FrameWarning] = []
    if any(c in ("elasto", "elasto_valid") for c in channels) and not has_swe:
        share = (reference or {}).get("swe_frame_fraction") if usable_reference(reference) else None
        trained = "" if share is None else f" ({share:.0%} of its training frames had SWE)"
        found.append(
            FrameWarning(
                MISSING_MODALITY,
                f"no elastography (SWE) in this frame, but the model was trained with it{trained}: "
                "detections rest on the B-mode alone and no stiffness is given",
            )
        )
    if spacing_mm is None:
        found.append(
            FrameWarning(
                PIXEL_SIZE_ASSUMED,
                f"no pixel size read for this frame: the network read it as if at its training spacing of "
                f"{model_spacing_mm:g} mm/pixel, and no millimetre figure is given",
            )
        )
    if usable_reference(reference):
        intensity = intensity_warning(statistics, reference)
        if intensity is not None:
            found.append(intensity)
    assumed = spacing_mm is None
    found += spacing_warnings(model_spacing_mm if assumed else spacing_mm, shape, model_spacing_mm, assumed)
    order = {code: i for i, code in enumerate(WARNING_CODES)}
    return sorted(found, key=lambda w: order.get(w.code, len(order)))
