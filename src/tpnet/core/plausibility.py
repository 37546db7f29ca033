"""What a frame may claim about itself: pixel size, field of view and stiffness, one set of rules for all tools.

``tpnet-data check`` applies them to a dataset (and so does training, which refuses a dataset the check
fails), the training loader applies the stiffness rule again, and ``tpnet-infer`` applies them to every frame
it analyses. Two tiers for the pixel size: outside ``SPACING_LIMITS_MM`` the number cannot be an ultrasound
pixel size at all (an error everywhere); outside the musculoskeletal ranges below, or far from the spacing a
model was trained at, it is probably a unit slip (a warning; ``tpnet-infer --strict`` rejects the frame).

Sources: the project's reference notes ``ultrasound-facts.md`` (shared reference folder), which cite the
primary literature; numbers marked "assumption" are ours, with the reasoning next to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from tpnet.core.encoding import elasto_to_kpa

# Hard limits, mm per pixel. Below 1 um a pixel is about 1/100 of the wavelength of even a 10 MHz probe
# (lambda ~ 0.15 mm, ultrasound-facts.md "Speckle grain"); above 5 mm it is coarser than the wavelength of any
# diagnostic probe (~1.5 mm at 1 MHz, c = 1540 m/s). Either is a unit or export error (1e9, 80 for 0.08).
SPACING_LIMITS_MM: tuple[float, float] = (0.001, 5.0)

# Plausible for musculoskeletal ultrasound, mm per pixel. A trapezius scan is about 0.06-0.09 mm/px
# (ultrasound-facts.md, "Geometry", assumption there); the real DICOM examples it lists are 0.26 and 0.51 mm/px
# (Philips, SonoSite: whole-screen captures). 0.02 allows a high-frequency (18-24 MHz) probe at 2 cm depth on a
# 1000-px image; 1.0 allows a 20 cm curvilinear sweep on 200 px (assumption). A 10x slip from 0.08 (0.008 or
# 0.8) is caught by this range or by the training-spacing factor below.
PLAUSIBLE_SPACING_MM: tuple[float, float] = (0.02, 1.0)

# Plausible field of view: the longer side of the frame, in mm. A trapezius scan is 38-50 mm wide and 30-40 mm
# deep (ultrasound-facts.md, "Geometry"); screen captures reach 163 and 210 mm (its DICOM examples). Below 1 mm a
# frame is narrower than the short axis of even a small trigger point (1.8 mm at -1 SD of 16 +- 11 mm^2, Sikdar
# 2009 via ultrasound-facts.md), so it cannot hold one (crops for tests and review can be small: the bound is
# deliberately loose); above 300 mm no probe images it (assumption: the deepest abdominal presets are 24-30 cm).
# A 1000x slip always lands outside; a 10x slip is caught here (380-500 mm) or by the pixel-size rules.
PLAUSIBLE_FIELD_MM: tuple[float, float] = (1.0, 300.0)

# A frame whose pixel size differs from the model's (or the dataset's median) training spacing by more than this
# factor is resampled so far that speckle grain (0.2-0.6 mm, ultrasound-facts.md) no longer looks like what the
# network learnt; more often it is a unit slip (assumption: the trapezius range 0.06-0.09 mm/px spans 1.5x).
FAR_FROM_TRAINING_FACTOR = 3.0

# Young's modulus in kPa. Muscle is 5-100 kPa (MRE 5.8-11.5 kPa, SWE 34-58 kPa; scanner scales 0-180 kPa,
# muscle presets topping out at 100-300 kPa: ultrasound-facts.md). Negative stiffness does not exist; past
# 1000 kPa (3x the widest preset) it is a unit or export bug, e.g. kPa declared as m/s.
STIFFNESS_KPA_RANGE: tuple[float, float] = (0.0, 1000.0)


def parse_spacing_mm(value: object) -> float:
    """A pixel size in mm from a manifest cell, YAML or JSON value; ``ValueError`` saying why it is refused.

    Numbers and numeric strings only: ``true`` would otherwise read as 1.0 mm/px."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{value!r} is not a number")
    try:
        spacing = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not spacing > 0 or not math.isfinite(spacing):
        raise ValueError(f"{value!r} must be a positive finite number")
    low, high = SPACING_LIMITS_MM
    if not low <= spacing <= high:
        raise ValueError(
            f"{spacing:g} mm/pixel is not an ultrasound pixel size (expected {low:g}-{high:g} mm; "
            "spacing_mm is in millimetres per pixel: a unit slip?)"
        )
    return spacing


def spacing_range_warning(spacing_mm: float) -> str | None:
    """Why a pixel size is implausible for musculoskeletal ultrasound (None when it is plausible)."""
    low, high = PLAUSIBLE_SPACING_MM
    if low <= spacing_mm <= high:
        return None
    return (
        f"pixel size {spacing_mm:g} mm is implausible for musculoskeletal ultrasound "
        f"(expected {low:g}-{high:g} mm/pixel)"
    )


def field_of_view_warning(spacing_mm: float, shape: Sequence[int]) -> str | None:
    """Why a frame of ``shape`` (H, W) pixels at ``spacing_mm`` covers an implausible area (None when fine)."""
    height_mm, width_mm = int(shape[0]) * spacing_mm, int(shape[1]) * spacing_mm
    low, high = PLAUSIBLE_FIELD_MM
    if low <= max(height_mm, width_mm) <= high:
        return None
    return (
        f"field of view {width_mm:.3g} x {height_mm:.3g} mm (W x H) at {spacing_mm:g} mm/pixel is implausible "
        f"for musculoskeletal ultrasound (longer side expected {low:g}-{high:g} mm)"
    )


def training_spacing_warning(spacing_mm: float, reference_mm: float, reference_name: str) -> str | None:
    """Why a pixel size is too far from the spacing a model is (or will be) trained at (None when close)."""
    ratio = spacing_mm / reference_mm
    if 1 / FAR_FROM_TRAINING_FACTOR <= ratio <= FAR_FROM_TRAINING_FACTOR:
        return None
    return (
        f"pixel size {spacing_mm:g} mm is {ratio:.3g}x {reference_name} ({reference_mm:g} mm/pixel); "
        f"expected within {FAR_FROM_TRAINING_FACTOR:g}x (a unit slip?)"
    )


def spacing_warnings(
    spacing_mm: float,
    shape: Sequence[int] | None = None,
    reference_mm: float | None = None,
    reference_name: str = "the model's training spacing",
) -> list[str]:
    """Every reason a frame's pixel size looks wrong (empty when it looks right): the range always, the field
    of view when ``shape`` (H, W) is known, the factor to ``reference_mm`` when one is given."""
    reasons = [spacing_range_warning(spacing_mm)]
    if shape is not None:
        reasons.append(field_of_view_warning(spacing_mm, shape))
    if reference_mm is not None:
        reasons.append(training_spacing_warning(spacing_mm, reference_mm, reference_name))
    return [reason for reason in reasons if reason is not None]


def stiffness_problem(stored: np.ndarray, unit: str) -> str | None:
    """Why an elastography map, as stored in ``unit``, cannot be used (None when it can). NaN = no signal.

    The sign is checked before conversion: squaring a negative shear-wave speed would hide it."""
    if np.isinf(stored).any():
        return "absurd stiffness: elastography contains Inf (use NaN for 'no signal')"
    if not np.isfinite(stored).any():
        return None  # no signal anywhere: usable as B-mode only
    low, high = STIFFNESS_KPA_RANGE
    lowest = float(np.nanmin(stored))
    if lowest < low:
        return f"absurd stiffness: negative values (min {lowest:.4g} {unit})"
    highest = float(np.nanmax(elasto_to_kpa(stored, unit)))
    if highest > high:
        return (
            f"absurd stiffness: up to {highest:.4g} kPa (from {unit}); expected at most {high:g} kPa "
            "(wrong elastography unit? dataset.yaml's elasto_unit says kPa or m/s)"
        )
    return None
