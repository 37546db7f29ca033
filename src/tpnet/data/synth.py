"""Physics-based synthetic upper-trapezius ultrasound: B-mode, shear-wave elastography (kPa) and labels.

A frame is built the way a scanner forms it (docs/synthetic-data.md lists every number and its source):
tissue echogenicity map (dB) -> complex Gaussian scatterers (Rayleigh speckle) -> baseband point-spread
function (axial pulse envelope x lateral Gaussian) -> envelope -> depth attenuation with partial
time-gain compensation -> log compression -> 8 bit. The SWE map is a coarse, noisy Young's-modulus map
inside a box, NaN where the scanner has no signal. Peripheral nerves (label 4, ``nerve``) are drawn from their own
random stream after every other object, so the rest of a frame is the same with or without them.

Everything is vectorised numpy/OpenCV. Each frame has its own RNG derived from (seed, subject, frame), and
each subject's anatomy from (seed, subject), so any number of worker processes writes the same bytes.
"""

from __future__ import annotations

import csv
import functools
import math
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.encoding import shear_speed_to_kpa
from tpnet.core.io import write_png, write_tiff

# 2: frames gained peripheral nerves (label 4) and dataset.yaml five classes; the cache name carries the version, so
# a cached four-class (version 1) data set is never taken for a new one.
GENERATOR_VERSION = 2
BACKGROUND, ACTIVE_TRP, LATENT_TRP, VESSEL, NERVE = 0, 1, 2, 3, 4
SPEED_OF_SOUND_MM_PER_US = 1.54
MAX_TGC_GAIN_DB = 60.0  # depth gain a scanner's TGC can add (assumption; "wide"/"shifted" presets only)
# Active vs latent effect sizes (docs/synthetic-data.md, "Active vs latent"): the defaults are the literature's
# "no reliable difference" (Valera-Calero 2021, Kobylarz 2025), i.e. active and latent TrPs drawn alike.
DEFAULT_ACTIVE_STIFFNESS_FACTOR = 1.0  # active TrPs' stiffness ratio (TrP / muscle) x this
DEFAULT_ACTIVE_ECHO_DB = 0.0  # active TrPs this many dB darker than a latent TrP of the same draw

# Tissue codes of the ``tissue`` map returned by generate_frame (tests and benchmarks use it; not written).
NEAR_FIELD, SKIN, FAT, FASCIA, MUSCLE, DEEP_MUSCLE, BONE, SHADOW = range(8)
TRP, VESSEL_TISSUE, FIBROTIC, SOFT_HYPOECHOIC = range(8, 12)
# A nerve's hypoechoic fascicles; its hyperechoic epineurium (rim, septa).
NERVE_FASCICLE, NERVE_EPINEURIUM = 12, 13

# Nerve anatomy and stiffness, the same in every preset (docs/synthetic-data.md, "Nerves"; assumptions marked there).
NERVE_STIFFNESS_RATIO = (1.1, 1.6)  # nerve / trapezius Young's modulus: stiffer than muscle, overlapping it
NERVE_FLATTENING = (1.0, 1.8)  # cross-section width / depth (oval, flattened between muscle layers)
NERVE_EPINEURIUM_MM = (0.2, 0.35)  # thickness of the bright outer rim
NERVE_FASCICLE_MM = (0.6, 1.2)  # fascicle diameter as ultrasound resolves it
NERVE_SEPTUM_MM = (0.1, 0.2)  # bright interfascicular epineurium between neighbouring fascicles
NERVE_HALF_LENGTH_MM = (6.0, 20.0)  # in-plane (long-axis) nerves: half the length of the straight segment
NERVE_GAP_TO_VESSEL_MM = (1.0, 2.0)  # a neurovascular bundle: nerve wall to vessel wall
NERVE_MIN_VISIBLE_MM = 5.0  # an in-plane nerve shows at least this length inside the frame
NERVE_TRIES = 25  # positions tried per nerve before it is given up (the muscle may be crowded with nodules)


Range = tuple[float, float]  # (low, high) of a uniform draw; low == high is a fixed value


@dataclass(frozen=True)
class AppearanceRanges:
    """Every appearance parameter's range, for one preset (docs/synthetic-data.md explains each).

    Per subject (one scanner setting and one body per subject; its frames share the draws): pixel size, frame
    size, layer thicknesses, echogenicity, PSF, attenuation and TGC, dynamic range and compression curve, speckle
    statistics, noise floor, SWE noise and confounder rates. Per frame: SWE box, object contrasts. Trigger-point
    size, shape and prevalence are the same in every preset (16 +/- 11 mm^2, Sikdar 2009): the presets change
    how a frame looks, not what is in it."""

    # Geometry (per subject). Frame height/width = requested size x scale, rounded to even pixels.
    spacing_mm: Range
    height_scale: Range
    width_scale: Range
    # Anatomy (per subject), mm, and fibre obliquity in degrees (either sign).
    skin_mm: Range
    fat_mm: Range
    fascia_mm: Range
    trapezius_mm: Range
    deep_muscle_mm: Range
    fibre_angle_deg: Range
    muscle_db: Range
    fat_db: Range
    # B-mode formation (per subject).
    gain_db: Range
    f0_mhz: Range
    cycles: Range
    lateral_fwhm_mm: Range
    lateral_sidelobe: Range  # weight of a sinc (focused-aperture) component in the lateral PSF; 0 = Gaussian
    alpha_db_cm_mhz: Range
    tgc_fraction: Range  # share of the round-trip attenuation the TGC undoes ...
    max_residual_db_per_cm: float  # ... raised so that what is left stays below this (the operator's TGC)
    tgc_error_db: Range  # peak of a smooth depth gain error (TGC sliders off their centre), +/-
    dynamic_range_db: Range
    # The operator turns the gain until mid-trapezius shows at a grey level (0-1, before the display curve)
    # inside this window; None = the gain is drawn and kept (literature).
    muscle_grey_window: Range | None
    log_gamma: Range  # display curve grey**gamma after log compression; 1 = linear in dB
    speckle_log10_nu: Range | None  # K-distributed speckle, shape nu (scatterers per cell); None = Rayleigh
    noise_floor_db: Range | None  # electronic noise re. the brightest reflector, before TGC; None = none
    display_blur_px: Range  # scan conversion / display interpolation
    # SWE (fwhm, box per frame; noise per subject).
    swe_fwhm_mm: Range
    swe_box_width_mm: Range
    swe_box_height_mm: Range
    swe_box_top_mm: Range
    swe_on_trp: float  # probability that the box is centred near a TrP (when the frame has one)
    swe_on_trp_jitter_mm: float
    swe_noise_sd: Range  # log-normal sd at the skin ...
    swe_noise_sd_per_30mm: Range  # ... growing by this much per 30 mm depth
    # Objects (contrasts per object; rates per subject).
    trp_contrast_db: Range
    fibrotic_contrast_db: Range
    soft_contrast_db: Range  # darker than the tissue around it by this much
    confounder_rate: Range | None  # mean count per frame of each confounder kind; None = literature tables
    shadow_rate: Range  # mean count per frame of acoustic shadows from small calcifications / contact loss
    # Nerves (label 4): rate per subject, everything else per nerve. Stiffness: NERVE_STIFFNESS_RATIO (all presets).
    # mean count per frame; None = the literature table (_LITERATURE_COUNTS["nerve"])
    nerve_rate: Range | None
    # equivalent diameter (cross-section area = pi d^2 / 4; in-plane: the band's thickness)
    nerve_diameter_mm: Range
    nerve_fascicle_contrast_db: Range  # fascicles this much darker than the subject's muscle
    nerve_epineurium_db: Range  # echo of the epineurium rim (dB re. bone); the septa inside are 6 dB below it
    nerve_in_plane: float  # probability that a nerve is seen along its length (else in cross-section)
    # probability that a cross-section nerve lies beside a vessel (neurovascular bundle)
    nerve_beside_vessel: float


APPEARANCES: dict[str, AppearanceRanges] = {
    # Today's narrow, sourced ranges (docs/synthetic-data.md, "Parameters and sources"). Byte-identical output
    # to the generator before presets existed: the demo, the tests and the cached datasets rely on it.
    "literature": AppearanceRanges(
        spacing_mm=(0.08, 0.12),
        height_scale=(1.0, 1.0),
        width_scale=(1.0, 1.0),
        skin_mm=(1.2, 2.0),
        fat_mm=(2.0, 6.0),
        fascia_mm=(1.1, 1.3),
        trapezius_mm=(11.0, 12.0),
        deep_muscle_mm=(2.5, 7.0),
        fibre_angle_deg=(6.0, 18.0),
        muscle_db=(-35.0, -32.0),
        fat_db=(-41.0, -37.0),
        gain_db=(-2.0, 2.0),
        f0_mhz=(7.0, 12.0),
        cycles=(2.0, 3.0),
        lateral_fwhm_mm=(0.4, 0.6),
        lateral_sidelobe=(0.0, 0.0),
        alpha_db_cm_mhz=(0.5, 1.0),
        tgc_fraction=(0.7, 0.9),
        max_residual_db_per_cm=math.inf,  # at most 2 x 1 x 12 x 0.3 = 7.2 dB/cm anyway
        tgc_error_db=(0.0, 0.0),
        dynamic_range_db=(50.0, 60.0),
        muscle_grey_window=None,
        log_gamma=(1.0, 1.0),
        speckle_log10_nu=None,
        noise_floor_db=None,
        display_blur_px=(0.6, 0.6),
        swe_fwhm_mm=(1.0, 1.5),
        swe_box_width_mm=(15.0, 25.0),
        swe_box_height_mm=(15.0, 25.0),
        swe_box_top_mm=(0.8, 4.0),
        swe_on_trp=0.7,
        swe_on_trp_jitter_mm=3.0,
        swe_noise_sd=(0.04, 0.04),
        swe_noise_sd_per_30mm=(0.12, 0.12),
        trp_contrast_db=(3.0, 9.0),
        fibrotic_contrast_db=(6.0, 12.0),
        soft_contrast_db=(3.0, 9.0),
        confounder_rate=None,
        shadow_rate=(0.0, 0.0),
        nerve_rate=None,
        nerve_diameter_mm=(2.0, 6.0),
        nerve_fascicle_contrast_db=(4.0, 10.0),
        nerve_epineurium_db=(-14.0, -10.0),
        nerve_in_plane=0.4,
        nerve_beside_vessel=0.75,
    ),
    # Domain randomisation: deliberately beyond the literature, so that no single texture, scale or grey
    # curve is a shortcut; a model trained on it has seen "other scanners" of the same anatomy.
    "wide": AppearanceRanges(
        spacing_mm=(0.06, 0.20),
        height_scale=(0.75, 1.25),
        width_scale=(0.75, 1.25),
        skin_mm=(0.8, 2.5),
        fat_mm=(1.0, 10.0),
        fascia_mm=(0.6, 2.0),
        trapezius_mm=(8.0, 16.0),
        deep_muscle_mm=(2.0, 12.0),
        fibre_angle_deg=(0.0, 25.0),
        muscle_db=(-40.0, -28.0),
        fat_db=(-46.0, -33.0),
        gain_db=(-6.0, 6.0),
        f0_mhz=(5.0, 15.0),
        cycles=(1.5, 4.0),
        lateral_fwhm_mm=(0.3, 1.0),
        lateral_sidelobe=(0.0, 0.6),
        alpha_db_cm_mhz=(0.4, 1.2),
        tgc_fraction=(0.5, 1.0),
        max_residual_db_per_cm=8.0,
        tgc_error_db=(0.0, 6.0),
        dynamic_range_db=(35.0, 75.0),
        muscle_grey_window=(0.2, 0.65),
        log_gamma=(0.7, 1.5),
        speckle_log10_nu=(-0.3, 2.0),
        noise_floor_db=(-105.0, -75.0),
        display_blur_px=(0.3, 1.2),
        swe_fwhm_mm=(0.8, 2.5),
        swe_box_width_mm=(8.0, 30.0),
        swe_box_height_mm=(8.0, 30.0),
        swe_box_top_mm=(0.5, 8.0),
        swe_on_trp=0.5,
        swe_on_trp_jitter_mm=6.0,
        swe_noise_sd=(0.02, 0.12),
        swe_noise_sd_per_30mm=(0.05, 0.30),
        trp_contrast_db=(3.0, 12.0),
        fibrotic_contrast_db=(3.0, 15.0),
        soft_contrast_db=(2.0, 12.0),
        confounder_rate=(0.2, 1.6),
        shadow_rate=(0.0, 0.8),
        nerve_rate=(0.2, 1.2),
        nerve_diameter_mm=(1.5, 8.0),
        nerve_fascicle_contrast_db=(2.0, 14.0),
        nerve_epineurium_db=(-20.0, -6.0),
        nerve_in_plane=0.5,
        nerve_beside_vessel=0.75,
    ),
    # Domain B of the generalisation benchmark: "another simulator" - another scanner preset (deeper, coarser
    # pixels, a 3-4 cm depth setting over a wider field), lower frequency and longer pulses (coarser speckle),
    # K-distributed speckle, a mis-set TGC, small off-centre SWE boxes, more confounders. Physically plausible,
    # and the trigger points are the same clinical size.
    "shifted": AppearanceRanges(
        spacing_mm=(0.13, 0.17),
        height_scale=(0.875, 0.875),  # 256 x 256 asked -> 224 rows x 320 columns
        width_scale=(1.25, 1.25),
        skin_mm=(1.5, 2.5),
        fat_mm=(3.0, 8.0),
        fascia_mm=(0.8, 1.6),
        trapezius_mm=(10.0, 14.0),
        deep_muscle_mm=(5.0, 10.0),
        fibre_angle_deg=(2.0, 12.0),
        muscle_db=(-34.0, -30.0),
        fat_db=(-40.0, -36.0),
        gain_db=(3.0, 7.0),
        f0_mhz=(5.0, 7.5),
        cycles=(3.0, 4.0),
        lateral_fwhm_mm=(0.7, 1.0),
        lateral_sidelobe=(0.3, 0.5),
        alpha_db_cm_mhz=(0.8, 1.2),
        tgc_fraction=(0.5, 0.7),
        max_residual_db_per_cm=12.0,
        tgc_error_db=(3.0, 6.0),
        dynamic_range_db=(42.0, 50.0),
        muscle_grey_window=(0.3, 0.6),
        log_gamma=(1.1, 1.3),
        speckle_log10_nu=(0.0, 0.5),
        noise_floor_db=(-80.0, -70.0),
        display_blur_px=(0.9, 1.2),
        swe_fwhm_mm=(2.0, 3.0),
        swe_box_width_mm=(8.0, 14.0),
        swe_box_height_mm=(8.0, 14.0),
        swe_box_top_mm=(2.0, 10.0),
        swe_on_trp=0.4,
        swe_on_trp_jitter_mm=6.0,
        swe_noise_sd=(0.08, 0.12),
        swe_noise_sd_per_30mm=(0.20, 0.30),
        trp_contrast_db=(3.5, 9.0),
        fibrotic_contrast_db=(4.0, 10.0),
        soft_contrast_db=(2.0, 6.0),
        confounder_rate=(1.2, 2.0),
        shadow_rate=(0.5, 1.0),
        nerve_rate=(0.6, 1.2),
        nerve_diameter_mm=(3.0, 8.0),
        nerve_fascicle_contrast_db=(2.0, 6.0),
        nerve_epineurium_db=(-18.0, -12.0),
        nerve_in_plane=0.4,
        nerve_beside_vessel=0.75,
    ),
}

# Count tables of the literature preset: P(0), P(1), P(2) per frame (confounders, vessels and nerves).
_LITERATURE_COUNTS = {
    "vessel": (0.45, 0.4, 0.15),
    "fibrotic": (0.5, 0.35, 0.15),
    "soft": (0.4, 0.4, 0.2),
    # a nerve in half the frames (assumption: injection sites are scanned near them)
    "nerve": (0.5, 0.4, 0.1),
}
_CONFOUNDER_KINDS = ("vessel", "fibrotic", "soft")  # the order of Subject.counts


def appearance_ranges(appearance: str) -> AppearanceRanges:
    """The preset's ranges; ValueError naming the allowed presets for an unknown name."""
    try:
        return APPEARANCES[appearance]
    except (KeyError, TypeError):
        allowed = ", ".join(APPEARANCES)
        raise ValueError(f"unknown appearance {appearance!r}: use one of {allowed}") from None


@dataclass(frozen=True)
class Subject:
    """Per-subject anatomy and scanner settings; frames of one subject jitter around these."""

    spacing_mm: float
    skin_mm: float
    fat_mm: float
    fascia_mm: float
    trapezius_mm: float
    deep_muscle_mm: float
    fibre_angle_rad: float
    undulation: tuple[tuple[float, float, float], ...]  # (amplitude mm, wavelength mm, phase) per boundary
    muscle_db: float
    fat_db: float
    gain_db: float
    f0_mhz: float
    cycles: float
    lateral_fwhm_mm: float
    alpha_db_cm_mhz: float
    tgc_fraction: float
    dynamic_range_db: float
    muscle_kpa: float
    fat_kpa: float
    deep_kpa_ratio: float
    # Appearance knobs beyond the literature generator; the defaults are the literature's (they change nothing).
    appearance: str = "literature"
    height_scale: float = 1.0
    width_scale: float = 1.0
    lateral_sidelobe: float = 0.0
    tgc_error_db: tuple[float, ...] = ()  # gain error (dB) at evenly spaced depths from skin to frame bottom
    log_gamma: float = 1.0
    speckle_nu: float | None = None
    noise_floor_db: float | None = None
    display_blur_px: float = 0.6
    swe_noise_sd: float = 0.04
    swe_noise_sd_per_30mm: float = 0.12
    counts: tuple[tuple[float, ...], ...] = tuple(_LITERATURE_COUNTS[kind] for kind in _CONFOUNDER_KINDS)
    # P(0), P(1), ... per frame for vessels, fibrotic and soft confounders
    shadow_counts: tuple[float, ...] = (1.0,)
    nerve_counts: tuple[float, ...] = _LITERATURE_COUNTS["nerve"]

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        """This subject's frame size when ``height`` x ``width`` is asked (even, at least 32 px)."""
        return _scaled(height, self.height_scale), _scaled(width, self.width_scale)


def _scaled(size: int, scale: float) -> int:
    if scale == 1.0:
        return size
    return max(32, 2 * int(round(size * scale / 2)))


def _truncated_poisson(mean: float, largest: int = 3) -> tuple[float, ...]:
    """P(0..largest) of a Poisson count with ``mean``, the tail folded into ``largest``."""
    probs = [math.exp(-mean) * mean**k / math.factorial(k) for k in range(largest)]
    return (*probs, max(0.0, 1.0 - sum(probs)))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    return float(rng.uniform(*bounds))


@functools.lru_cache(maxsize=64)
def sample_subject(seed: int, subject: int, appearance: str = "literature") -> Subject:
    """Draw one subject from the ``appearance`` preset (cached: every frame of a subject reuses it).

    The literature draws come from the stream (seed, 1, subject) in their historic order, so "literature"
    subjects are the same as before presets existed; the newer knobs come from their own stream
    (seed, 3, subject)."""
    ranges = appearance_ranges(appearance)
    rng = _rng(seed, 1, subject)

    # Shear-wave speed of a normal upper trapezius 3.35 +/- 0.79 m/s (Hao 2023); E = 3 rho c^2.
    speed = float(np.clip(rng.normal(3.35, 0.79), 2.3, 4.6))
    angle = math.radians(_uniform(rng, ranges.fibre_angle_deg)) * rng.choice([-1.0, 1.0])
    undulation = tuple(
        (float(rng.uniform(0.1, 0.6)), float(rng.uniform(15.0, 45.0)), float(rng.uniform(0, 2 * math.pi)))
        for _ in range(6)
    )
    drawn = dict(
        # Literature 0.08-0.12 mm: the upper half of the 0.06-0.12 mm range, so 256 px reach below the muscle.
        spacing_mm=round(_uniform(rng, ranges.spacing_mm), 5),
        skin_mm=_uniform(rng, ranges.skin_mm),
        fat_mm=_uniform(rng, ranges.fat_mm),  # skin + fat = 3-8 mm subcutis (Salavati 2017, facts file)
        fascia_mm=_uniform(rng, ranges.fascia_mm),
        trapezius_mm=_uniform(rng, ranges.trapezius_mm),
        deep_muscle_mm=_uniform(rng, ranges.deep_muscle_mm),
        fibre_angle_rad=angle,
        undulation=undulation,
        muscle_db=_uniform(rng, ranges.muscle_db),
        fat_db=_uniform(rng, ranges.fat_db),
        gain_db=_uniform(rng, ranges.gain_db),
        f0_mhz=_uniform(rng, ranges.f0_mhz),
        cycles=_uniform(rng, ranges.cycles),
        lateral_fwhm_mm=_uniform(rng, ranges.lateral_fwhm_mm),
        alpha_db_cm_mhz=_uniform(rng, ranges.alpha_db_cm_mhz),
        tgc_fraction=_uniform(rng, ranges.tgc_fraction),
        dynamic_range_db=_uniform(rng, ranges.dynamic_range_db),
        muscle_kpa=float(shear_speed_to_kpa(speed**2)),
        fat_kpa=float(rng.uniform(8.0, 18.0)),
        deep_kpa_ratio=float(rng.uniform(0.8, 1.2)),
    )
    if appearance == "literature":
        return Subject(**drawn)

    # What the operator would set for this subject: enough TGC and gain to see the muscle.
    extra = _rng(seed, 3, subject)
    round_trip_db_per_cm = 2.0 * drawn["alpha_db_cm_mhz"] * drawn["f0_mhz"]
    least_tgc = 1.0 - ranges.max_residual_db_per_cm / round_trip_db_per_cm
    drawn["tgc_fraction"] = max(drawn["tgc_fraction"], least_tgc)
    if ranges.muscle_grey_window is not None:
        mid_muscle_cm = (
            drawn["skin_mm"] + drawn["fat_mm"] + drawn["fascia_mm"] + drawn["trapezius_mm"] / 2
        ) / 10.0
        residual_db = round_trip_db_per_cm * (1.0 - drawn["tgc_fraction"]) * mid_muscle_cm
        # grey = (muscle_db + gain - residual + DR) / DR, kept inside the window
        low, high = (
            (grey - 1.0) * drawn["dynamic_range_db"] - drawn["muscle_db"] + residual_db
            for grey in ranges.muscle_grey_window
        )
        drawn["gain_db"] = float(np.clip(drawn["gain_db"], low, high))
    tgc_peak = _uniform(extra, ranges.tgc_error_db)
    tgc_error = tuple(float(v) for v in tgc_peak * extra.uniform(-1.0, 1.0, 6))
    nu = None if ranges.speckle_log10_nu is None else 10.0 ** _uniform(extra, ranges.speckle_log10_nu)
    floor = None if ranges.noise_floor_db is None else _uniform(extra, ranges.noise_floor_db)
    if ranges.confounder_rate is None:
        counts = tuple(_LITERATURE_COUNTS[kind] for kind in _CONFOUNDER_KINDS)
    else:
        counts = tuple(_truncated_poisson(_uniform(extra, ranges.confounder_rate)) for _ in range(3))
    return Subject(
        **drawn,
        appearance=appearance,
        height_scale=_uniform(extra, ranges.height_scale),
        width_scale=_uniform(extra, ranges.width_scale),
        lateral_sidelobe=_uniform(extra, ranges.lateral_sidelobe),
        tgc_error_db=tgc_error,
        log_gamma=_uniform(extra, ranges.log_gamma),
        speckle_nu=nu,
        noise_floor_db=floor,
        display_blur_px=_uniform(extra, ranges.display_blur_px),
        swe_noise_sd=_uniform(extra, ranges.swe_noise_sd),
        swe_noise_sd_per_30mm=_uniform(extra, ranges.swe_noise_sd_per_30mm),
        counts=counts,
        shadow_counts=_truncated_poisson(_uniform(extra, ranges.shadow_rate), largest=2),
        # Drawn last, so every earlier draw of this stream is what it was before nerves existed.
        nerve_counts=_nerve_counts(extra, ranges),
    )


def _nerve_counts(rng: np.random.Generator, ranges: AppearanceRanges) -> tuple[float, ...]:
    if ranges.nerve_rate is None:
        return _LITERATURE_COUNTS["nerve"]
    return _truncated_poisson(_uniform(rng, ranges.nerve_rate), largest=2)


# ----------------------------------------------------------------------------------------------- helpers
def _streaks(rng, shape, angle_rad, length_px, width_px, pad=24) -> np.ndarray:
    """Zero-mean, unit-std noise stretched into thin streaks at ``angle_rad`` (fibres, septa).

    Cheap: blur noise on a laterally decimated grid, upsample, rotate."""
    h, w = shape
    side = int(math.ceil(math.hypot(h, w))) + 2 * pad
    step = max(1, int(length_px // 4))
    small = rng.standard_normal((side, side // step + 2), dtype=np.float32)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=1.2, sigmaY=max(0.5, width_px))
    big = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
    rot = cv2.getRotationMatrix2D((side / 2, side / 2), math.degrees(-angle_rad), 1.0)
    rot[:, 2] += (w / 2 - side / 2, h / 2 - side / 2)
    out = cv2.warpAffine(big, rot, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (out - out.mean()) / (out.std() + 1e-6)


def _smooth_noise(rng, shape, sigma_px) -> np.ndarray:
    """Zero-mean, unit-std Gaussian random field; wide ones are made on a coarse grid (cheap)."""
    step = max(1, int(sigma_px // 3))
    small = rng.standard_normal((shape[0] // step + 2, shape[1] // step + 2), dtype=np.float32)
    noise = cv2.GaussianBlur(small, (0, 0), sigmaX=max(0.5, sigma_px / step))
    if step > 1:
        noise = cv2.resize(noise, (shape[1] + 2 * step, shape[0] + 2 * step), interpolation=cv2.INTER_LINEAR)
    noise = noise[: shape[0], : shape[1]]
    return (noise - noise.mean()) / (noise.std() + 1e-6)


@dataclass
class _Blob:
    """An ellipse-like object in mm; ``wobble`` makes the outline irregular (angular harmonics)."""

    kind: int
    cx: float
    cz: float
    a: float  # semi-axis along ``theta``
    b: float
    theta: float
    wobble: tuple[tuple[float, float], ...] = ()

    def radius(self, spacing: float, shape: tuple[int, int], pad_mm: float = 1.0):
        """(row slice, col slice, normalised radius r) on the bounding box; r < 1 is inside."""
        ext = max(self.a, self.b) * (1.0 + sum(abs(a) for a, _ in self.wobble)) + pad_mm
        r0, r1 = max(0, int((self.cz - ext) / spacing)), min(shape[0], int((self.cz + ext) / spacing) + 2)
        c0, c1 = max(0, int((self.cx - ext) / spacing)), min(shape[1], int((self.cx + ext) / spacing) + 2)
        zz = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5) * spacing - self.cz
        xx = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5) * spacing - self.cx
        u = (xx * math.cos(self.theta) + zz * math.sin(self.theta)) / self.a
        v = (-xx * math.sin(self.theta) + zz * math.cos(self.theta)) / self.b
        r = np.sqrt(u * u + v * v)
        if self.wobble:
            phi = np.arctan2(v, u)
            scale = 1.0 + sum(amp * np.cos((k + 2) * phi + ph) for k, (amp, ph) in enumerate(self.wobble))
            r = r / scale
        return slice(r0, r1), slice(c0, c1), r

    @property
    def area_mm2(self) -> float:
        return math.pi * self.a * self.b


def _soft(r: np.ndarray, edge: float = 0.25) -> np.ndarray:
    """1 inside, 0 outside, smooth across r = 1 (0.5 on the outline)."""
    t = np.clip((1.0 + edge / 2 - r) / edge, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _draw_count(rng, probs) -> int:
    return int(rng.choice(len(probs), p=probs))


# ----------------------------------------------------------------------------------------------- nerves
@dataclass
class _Nerve:
    """A peripheral nerve, in mm. Cross-section: an oval (semi-axes ``a`` along ``theta``, ``b`` across) holding a
    honeycomb of round fascicles. In plane (long axis): a straight band of half-length ``a`` and half-thickness
    ``b`` whose ends taper (the nerve leaves the image plane), holding parallel fascicle stripes."""

    cx: float
    cz: float
    a: float
    b: float
    theta: float
    in_plane: bool
    rim_mm: float  # epineurium rim thickness
    # Cross-section: (n, 3) fascicle centre u, v and radius; in plane: (n, 7) stripe centre v, half-width, wave
    # amplitude, wavelength, phase, and the wavelength and phase of the gaps where a fascicle leaves the plane.
    fascicles: np.ndarray
    rim_db: float
    fascicle_db: float
    ratio: float  # Young's modulus / the subject's trapezius
    beside_vessel: bool = False

    def frame(self, spacing: float, shape: tuple[int, int], pad_mm: float = 1.5):
        """(row slice, col slice, u, v) on the bounding box clipped to the frame; u, v in mm along and across."""
        c, s_ = math.cos(self.theta), math.sin(self.theta)
        ext_x = abs(self.a * c) + abs(self.b * s_) + pad_mm
        ext_z = abs(self.a * s_) + abs(self.b * c) + pad_mm
        r0, r1 = max(0, int((self.cz - ext_z) / spacing)), min(shape[0], int((self.cz + ext_z) / spacing) + 2)
        c0, c1 = max(0, int((self.cx - ext_x) / spacing)), min(shape[1], int((self.cx + ext_x) / spacing) + 2)
        zz = (np.arange(r0, r1, dtype=np.float32)[:, None] + 0.5) * spacing - self.cz
        xx = (np.arange(c0, c1, dtype=np.float32)[None, :] + 0.5) * spacing - self.cx
        return slice(r0, r1), slice(c0, c1), xx * c + zz * s_, -xx * s_ + zz * c

    def radius(self, u: np.ndarray, v: np.ndarray, grow_mm: float = 0.0) -> np.ndarray:
        """Normalised radius of the outline grown by ``grow_mm`` (r < 1 inside)."""
        a, b = self.a + grow_mm, self.b + grow_mm
        if self.in_plane:  # (u/a)^8: flat along the band, tapering over its last ~15 %
            return np.sqrt((u / a) ** 8 + (v / b) ** 2)
        return np.sqrt((u / a) ** 2 + (v / b) ** 2)

    def extent_towards(self, phi: float) -> float:
        """Distance (mm) from the centre to the outline in the image direction ``phi`` (cross-sections)."""
        rel = phi - self.theta
        return 1.0 / math.sqrt((math.cos(rel) / self.a) ** 2 + (math.sin(rel) / self.b) ** 2)


def _draw_nerves(
    rng: np.random.Generator,
    subj: Subject,
    ranges: AppearanceRanges,
    layers: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    vessels: list[_Blob],
    occupied: np.ndarray,
    s: float,
    shape: tuple[int, int],
) -> tuple[list[_Nerve], list[_Blob]]:
    """This frame's nerves, placed in or between the muscle layers at least 1 mm from every earlier object
    (``occupied`` holds their 1 mm halos and gains the nerves'), and the vessels drawn as bundle companions.
    ``layers``: trapezius top and bottom, deep muscle top, bone top (mm per column)."""
    trap_top, trap_bottom, deep_top, bone_top = layers
    width_mm = shape[1] * s
    # Where a nerve runs (assumption): inside the trapezius, along the fascial plane under it, in the deep muscle.
    compartments = {
        "trapezius": (trap_top, trap_bottom),
        "between": (trap_top, bone_top),  # straddles the deep fascia, kept inside the muscles above and below
        "deep": (deep_top, bone_top),
    }

    def column(cx: float) -> int:
        return int(np.clip(cx / s, 0, shape[1] - 1))

    muscle_vessels = [v for v in vessels if v.cz > trap_top[column(v.cx)]]
    nerves: list[_Nerve] = []
    companions: list[_Blob] = []
    for _ in range(_draw_count(rng, subj.nerve_counts)):
        in_plane = rng.random() < ranges.nerve_in_plane
        bundle = not in_plane and rng.random() < ranges.nerve_beside_vessel
        diameter = _uniform(rng, ranges.nerve_diameter_mm)
        rim_mm = min(_uniform(rng, NERVE_EPINEURIUM_MM), 0.2 * diameter)
        if in_plane:
            a, b = _uniform(rng, NERVE_HALF_LENGTH_MM), diameter / 2
        else:
            flattening = _uniform(rng, NERVE_FLATTENING)
            a, b = diameter / 2 * math.sqrt(flattening), diameter / 2 / math.sqrt(flattening)
        fascicle_mm, septum_mm = _uniform(rng, NERVE_FASCICLE_MM), _uniform(rng, NERVE_SEPTUM_MM)
        rim_db = _uniform(rng, ranges.nerve_epineurium_db)
        fascicle_db = subj.muscle_db - _uniform(rng, ranges.nerve_fascicle_contrast_db)
        ratio = _uniform(rng, NERVE_STIFFNESS_RATIO)
        for _try in range(NERVE_TRIES):
            where = str(rng.choice(list(compartments), p=[0.4, 0.4, 0.2]))
            if in_plane and _try:  # a shorter segment fits between the nodules more easily
                a = max(NERVE_MIN_VISIBLE_MM / 2, 0.9 * a)
            theta = math.radians(rng.uniform(-5.0, 5.0))
            partner = None
            # beside a vessel of the frame, left or right, a little above or below
            if bundle and muscle_vessels:
                vessel = muscle_vessels[int(rng.integers(len(muscle_vessels)))]
                phi = rng.choice([0.0, math.pi]) + rng.uniform(-0.7, 0.7)
                probe = _Nerve(0.0, 0.0, a, b, theta, False, rim_mm, np.zeros((0, 3)), 0.0, 0.0, 1.0)
                reach = (
                    max(vessel.a, vessel.b)
                    + _uniform(rng, NERVE_GAP_TO_VESSEL_MM)
                    + probe.extent_towards(phi)
                )
                cx, cz = vessel.cx + reach * math.cos(phi), vessel.cz + reach * math.sin(phi)
                top, bottom = compartments["between"]
            else:
                top, bottom = compartments[where]
                cx = rng.uniform(0.5, width_mm - 0.5)
                col = column(cx)
                if where == "between":  # centred on the deep fascia
                    cz = (trap_bottom[col] + deep_top[col]) / 2 + rng.uniform(-0.3, 0.3)
                else:
                    cz = rng.uniform(top[col] + b + 0.4, max(top[col] + b + 0.4, bottom[col] - b - 0.4))
            nerve = _Nerve(
                cx, cz, a, b, theta, in_plane, rim_mm, np.zeros((0, 3)), rim_db, fascicle_db, ratio
            )
            if not _nerve_fits(nerve, top, bottom, occupied, s):
                continue
            if bundle and not muscle_vessels:  # a vessel of its own beside it
                partner = _companion_vessel(rng, nerve, compartments["between"], occupied, s)
                if partner is None:
                    continue
            nerve.beside_vessel = bundle
            nerve.fascicles = _fascicles(rng, nerve, fascicle_mm, septum_mm)
            _mark(occupied, nerve, s)
            if partner is not None:
                rows, cols, r = partner.radius(s, shape, pad_mm=1.0)
                occupied[rows, cols] |= r < 1.0 + 1.0 / min(partner.a, partner.b)
                companions.append(partner)
            nerves.append(nerve)
            break
    return nerves, companions


def _nerve_fits(nerve: _Nerve, top: np.ndarray, bottom: np.ndarray, occupied: np.ndarray, s: float) -> bool:
    """In view (a cross-section whole, an in-plane band at least NERVE_MIN_VISIBLE_MM long), 0.4 mm inside its
    compartment (``top``, ``bottom`` per column), and clear of every earlier object's 1 mm halo."""
    shape = occupied.shape
    rows, cols, u, v = nerve.frame(s, shape)
    inside = nerve.radius(u, v) < 1.0
    rr, cc = np.nonzero(inside)
    if rr.size == 0:
        return False
    zmin, zmax = (rows.start + rr.min()) * s, (rows.start + rr.max() + 1) * s
    xmin, xmax = (cols.start + cc.min()) * s, (cols.start + cc.max() + 1) * s
    if zmax > shape[0] * s - 0.3:
        return False
    if nerve.in_plane:
        if xmax - xmin < NERVE_MIN_VISIBLE_MM:
            return False
    elif xmin < 0.3 or xmax > shape[1] * s - 0.3:
        return False
    span = slice(cols.start + cc.min(), cols.start + cc.max() + 1)
    if zmin < top[span].max() + 0.4 or zmax > bottom[span].min() - 0.4:
        return False
    return not (occupied[rows, cols] & inside).any()


def _mark(occupied: np.ndarray, nerve: _Nerve, s: float) -> None:
    rows, cols, u, v = nerve.frame(s, occupied.shape)
    occupied[rows, cols] |= nerve.radius(u, v, grow_mm=1.0) < 1.0


def _companion_vessel(
    rng: np.random.Generator,
    nerve: _Nerve,
    compartment: tuple[np.ndarray, np.ndarray],
    occupied: np.ndarray,
    s: float,
) -> _Blob | None:
    """A vessel like the deep ones (radius 0.9-2 mm) beside ``nerve``, 1-2 mm from its wall; None if none fits."""
    shape = occupied.shape
    top, bottom = compartment
    for _try in range(6):
        radius = rng.uniform(0.9, 2.0)
        a, b = radius * rng.uniform(1.0, 1.4), radius
        phi = rng.choice([0.0, math.pi]) + rng.uniform(-0.7, 0.7)
        reach = nerve.extent_towards(phi) + _uniform(rng, NERVE_GAP_TO_VESSEL_MM) + max(a, b)
        blob = _Blob(
            VESSEL_TISSUE, nerve.cx + reach * math.cos(phi), nerve.cz + reach * math.sin(phi), a, b,
            rng.uniform(-0.2, 0.2),
        )  # fmt: skip
        rows, cols, r = blob.radius(s, shape, pad_mm=1.0)
        inside = r < 1.0
        rr, cc = np.nonzero(inside)
        if rr.size == 0:
            continue
        zmin, zmax = (rows.start + rr.min()) * s, (rows.start + rr.max() + 1) * s
        xmin, xmax = (cols.start + cc.min()) * s, (cols.start + cc.max() + 1) * s
        if xmin < 0.3 or xmax > shape[1] * s - 0.3 or zmax > shape[0] * s - 0.3:
            continue
        span = slice(cols.start + cc.min(), cols.start + cc.max() + 1)
        if zmin < top[span].max() + 0.2 or zmax > bottom[span].min() - 0.2:
            continue
        if (occupied[rows, cols] & inside).any():
            continue
        return blob
    return None


def _fascicles(rng: np.random.Generator, nerve: _Nerve, fascicle_mm: float, septum_mm: float) -> np.ndarray:
    """Cross-section: a jittered hexagonal honeycomb of round fascicles inside the rim, some missing (n, 3: u, v,
    radius); a nerve too small for two gets one (monofascicular). In plane: parallel wavy stripes (n, 7)."""
    fascicle_mm = min(fascicle_mm, 0.3 * 2 * nerve.b)  # a small nerve holds at least a few fascicles
    pitch = fascicle_mm + septum_mm
    inner_a, inner_b = nerve.a - nerve.rim_mm, nerve.b - nerve.rim_mm
    if nerve.in_plane:
        n = max(1, int(round(2 * inner_b / pitch)))
        centres = -inner_b + (np.arange(n) + 0.5) * (2 * inner_b / n)
        half = np.full(n, min(fascicle_mm / 2, 0.4 * 2 * inner_b / n))
        return np.column_stack(
            [
                centres,
                half * rng.uniform(0.8, 1.05, n),
                rng.uniform(0.0, 0.1, n),  # wave amplitude, mm
                rng.uniform(4.0, 10.0, n),  # wavelength, mm
                rng.uniform(0.0, 2 * np.pi, n),
                rng.uniform(3.0, 8.0, n),  # gap wavelength, mm
                rng.uniform(0.0, 2 * np.pi, n),
            ]
        ).astype(np.float32)
    row_step = pitch * math.sqrt(3.0) / 2
    rows_n, cols_n = int(inner_b / row_step) + 2, int(inner_a / pitch) + 2
    j, i = np.meshgrid(np.arange(-rows_n, rows_n + 1), np.arange(-cols_n, cols_n + 1), indexing="ij")
    offset = rng.uniform(0.0, pitch, 2)
    u = (i + 0.5 * (j % 2)) * pitch + offset[0] - pitch / 2
    v = j * row_step + offset[1] * math.sqrt(3.0) / 2 - row_step / 2
    u = (u + rng.uniform(-0.12, 0.12, u.shape) * pitch).ravel()
    v = (v + rng.uniform(-0.12, 0.12, v.shape) * pitch).ravel()
    radius = fascicle_mm / 2 * rng.uniform(0.85, 1.05, u.shape)
    # Centres inside the rim by less than a radius: fascicles reach the rim, as in the honeycomb.
    reach_a, reach_b = np.maximum(inner_a - 0.2 * radius, 1e-3), np.maximum(inner_b - 0.2 * radius, 1e-3)
    keep = (u / reach_a) ** 2 + (v / reach_b) ** 2 < 1.0
    keep &= rng.random(u.shape) > 0.05  # irregular: a few fascicles out of the section
    if keep.sum() < 2:
        return np.array([[0.0, 0.0, 0.75 * max(min(inner_a, inner_b), 0.2)]], np.float32)
    return np.column_stack([u[keep], v[keep], radius[keep]]).astype(np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _paint_nerve(
    nerve: _Nerve,
    db: np.ndarray,
    kpa: np.ndarray,
    mask: np.ndarray,
    tissue: np.ndarray,
    subj: Subject,
    s: float,
) -> dict:
    """Echo, stiffness, label and tissue codes of one nerve (in place); its ``objects`` entry."""
    rows, cols, u, v = nerve.frame(s, db.shape)
    r = nerve.radius(u, v)
    depth_in = (1.0 - r) * nerve.b  # mm inside the outline (approximately; exact across an in-plane band)
    dark = np.zeros(r.shape, np.float32)  # 1 on fascicles
    edge = 0.15  # mm over which a fascicle's border goes from dark to bright
    if nerve.in_plane:
        for centre, half, amp, wavelength, phase, gap_wl, gap_phase in nerve.fascicles:
            wavy = centre + amp * np.sin(2 * np.pi * u / wavelength + phase)
            stripe = _smoothstep((half + edge / 2 - np.abs(v - wavy)) / edge)
            present = _smoothstep(2.0 + 2.0 * np.sin(2 * np.pi * u / gap_wl + gap_phase))  # short gaps
            np.maximum(dark, stripe * present, out=dark)
    else:
        c, s_ = math.cos(nerve.theta), math.sin(nerve.theta)
        for fu, fv, radius in nerve.fascicles:
            # Each fascicle on its own small window (cheap whatever the nerve's size).
            fx, fz = nerve.cx + fu * c - fv * s_, nerve.cz + fu * s_ + fv * c
            reach = radius + edge
            r0 = max(rows.start, int((fz - reach) / s)) - rows.start
            r1 = min(rows.stop, int((fz + reach) / s) + 2) - rows.start
            c0 = max(cols.start, int((fx - reach) / s)) - cols.start
            c1 = min(cols.stop, int((fx + reach) / s) + 2) - cols.start
            if r0 >= r1 or c0 >= c1:
                continue
            distance = np.hypot(u[r0:r1, c0:c1] - fu, v[r0:r1, c0:c1] - fv)
            np.maximum(
                dark[r0:r1, c0:c1], _smoothstep((radius + edge / 2 - distance) / edge), out=dark[r0:r1, c0:c1]
            )
    # Hyperechoic epineurium: a bright rim, bright septa (6 dB below it) between dark fascicles.
    septa_db = nerve.rim_db - 6.0
    inner = septa_db + dark * (nerve.fascicle_db - septa_db)
    half_rim = nerve.rim_mm / 2
    rim = np.exp(-(((depth_in - half_rim) / half_rim) ** 2))
    inner = inner + rim * (nerve.rim_db - inner)
    w = _smoothstep((depth_in + 0.1) / 0.2)  # 0.5 on the outline
    db[rows, cols] = (1 - w) * db[rows, cols] + w * inner
    kpa[rows, cols] = (1 - w) * kpa[rows, cols] + w * (nerve.ratio * subj.muscle_kpa)
    inside = r < 1.0
    mask[rows, cols][inside] = NERVE
    tissue[rows, cols][inside] = np.where(dark[inside] > 0.5, NERVE_FASCICLE, NERVE_EPINEURIUM)
    return {
        "kind": NERVE_EPINEURIUM,
        "label": NERVE,
        "cx_mm": nerve.cx,
        "cz_mm": nerve.cz,
        "area_mm2": float(inside.sum() * s * s),  # what the frame shows (an in-plane band may leave it)
        "contrast_db": float(subj.muscle_db - nerve.fascicle_db),  # fascicles this much darker than muscle
        "stiffness_ratio": float(nerve.ratio),
        "view": "in-plane" if nerve.in_plane else "cross-section",
        "diameter_mm": float(2 * nerve.b if nerve.in_plane else 2 * math.sqrt(nerve.a * nerve.b)),
        "fascicles": int(len(nerve.fascicles)),
        "beside_vessel": bool(nerve.beside_vessel),
    }


# ----------------------------------------------------------------------------------------------- frame
def generate_frame(
    seed: int,
    subject: int,
    frame: int,
    height: int = 256,
    width: int = 256,
    appearance: str = "literature",
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> dict:
    """One synthetic frame, drawn from the ``appearance`` preset (``APPEARANCES``).

    ``active_stiffness_factor`` multiplies an active TrP's stiffness ratio and ``active_echo_db`` makes it that
    much darker (negative: brighter); latent TrPs and everything else are untouched. Both act after every
    random draw, so the frame's randomness (and, at the defaults, its bytes) is the same whatever they are.

    ``height`` x ``width`` is the size asked for; presets that vary the frame size scale it per subject
    (``Subject.frame_size``), so read the size from the arrays. Returns ``{"bmode": uint8 (H, W), "elasto": float32 kPa (H, W) with NaN = no signal, or None,
    "mask": uint8 (H, W) labels, "spacing_mm": float, "tissue": uint8 (H, W) tissue codes,
    "objects": list of dicts (kind, label, cx_mm, cz_mm, area_mm2, contrast_db, stiffness_ratio)}``.
    """
    ranges = appearance_ranges(appearance)
    check_active_latent_effect(active_stiffness_factor, active_echo_db)
    subj = sample_subject(seed, subject, appearance)
    rng = _rng(seed, 2, subject, frame)
    # The newer knobs' per-frame randomness has its own stream, so the literature stream stays as it was.
    extra = None if appearance == "literature" else _rng(seed, 4, subject, frame)
    height, width = subj.frame_size(height, width)
    s = subj.spacing_mm
    shape = (height, width)
    z = ((np.arange(height, dtype=np.float32) + 0.5) * s)[:, None]  # depth, mm
    x = ((np.arange(width, dtype=np.float32) + 0.5) * s)[None, :]  # lateral, mm

    # --- layer boundaries (mm, per column): probe shift moves the undulations, tilt/pressure jitter depths
    shift = rng.uniform(-4.0, 4.0)
    tilt = math.tan(math.radians(rng.uniform(-2.0, 2.0)))
    squeeze = rng.uniform(0.96, 1.04)
    xc = width * s / 2

    def wave(i: int) -> np.ndarray:
        amp, wl, ph = subj.undulation[i]
        return amp * np.sin(2 * np.pi * (x[0] + shift) / wl + ph)

    gel = rng.uniform(0.1, 0.3)
    skin_bottom = gel + subj.skin_mm + 0.1 * wave(0)
    fascia_top = skin_bottom + subj.fat_mm * squeeze + wave(1)
    trap_top = fascia_top + subj.fascia_mm
    trap_bottom = trap_top + subj.trapezius_mm * squeeze + wave(2) + tilt * (x[0] - xc) * 0.5
    deep_top = trap_bottom + 1.0
    bone_top = deep_top + subj.deep_muscle_mm + wave(3) + tilt * (x[0] - xc)
    bone_bottom = bone_top + rng.uniform(0.5, 0.9)

    tissue = np.full(shape, NEAR_FIELD, np.uint8)
    zz = np.broadcast_to(z, shape)
    for boundary, code in [
        (gel, SKIN),
        (skin_bottom, FAT),
        (fascia_top, FASCIA),
        (trap_top, MUSCLE),
        (trap_bottom, FASCIA),
        (deep_top, DEEP_MUSCLE),
        (bone_top, BONE),
        (bone_bottom, SHADOW),
    ]:
        tissue[zz >= boundary] = code

    # --- echogenicity (dB re. the brightest specular reflector) and Young's modulus (kPa) per layer
    fibres = _streaks(rng, shape, subj.fibre_angle_rad, length_px=6.0 / s, width_px=0.7)
    deep_fibres = _streaks(rng, shape, -0.5 * subj.fibre_angle_rad, length_px=3.0 / s, width_px=0.7)
    septa = _streaks(rng, shape, rng.uniform(-0.15, 0.15), length_px=2.5 / s, width_px=0.8)
    striation = np.clip(fibres - 0.3, 0.0, None) * 9.0  # bright perimysium lines on dark fascicles
    # Fascia: fibrous band, brightest at its two edges, patchy along its length.
    fascia_db = -21.0 + 3.0 * _streaks(rng, shape, 0.0, length_px=1.5 / s, width_px=1.0)
    edge_mm = np.minimum(np.abs(zz - fascia_top), np.abs(zz - trap_top))
    edge_mm = np.minimum(edge_mm, np.minimum(np.abs(zz - trap_bottom), np.abs(zz - deep_top)))
    fascia_db = np.maximum(fascia_db, -9.0 - 80.0 * edge_mm**2 + 2.5 * septa)
    db = np.select(
        [tissue == NEAR_FIELD, tissue == SKIN, tissue == FAT, tissue == FASCIA, tissue == MUSCLE],
        [
            -55.0,
            -14.0 + 2.0 * septa,
            subj.fat_db + np.clip(septa - 0.9, 0.0, None) * 14.0,
            fascia_db,
            subj.muscle_db + striation,
        ],
        default=subj.muscle_db - 1.0 + np.clip(deep_fibres - 0.3, 0.0, None) * 8.0,
    ).astype(np.float32)
    db = np.maximum(db, -3.0 - 40.0 * (z - gel) ** 2)  # entry echo at the skin surface
    bone = tissue == BONE
    db[bone] = (-2.0 + 2.0 * septa)[bone]
    below = np.clip(z - bone_bottom, 0.0, None)
    shadow = tissue == SHADOW
    db[shadow] = (-52.0 + 6.0 * np.exp(-below / 1.5))[shadow]  # acoustic shadow, faint reverberation

    kpa = np.select(
        [tissue == SKIN, tissue == FAT, tissue == FASCIA, tissue == MUSCLE],
        [40.0, subj.fat_kpa, 1.6 * subj.muscle_kpa, subj.muscle_kpa],
        default=subj.deep_kpa_ratio * subj.muscle_kpa,
    ).astype(np.float32)
    kpa *= 1.0 + 0.06 * _smooth_noise(rng, shape, 3.0 / s)  # smooth regional variation

    mask = np.zeros(shape, np.uint8)
    occupied = np.zeros(shape, bool)
    objects: list[dict] = []
    depth_mm = height * s
    width_mm = width * s

    def place(blob: _Blob, layer: tuple[np.ndarray, np.ndarray] | None) -> bool:
        """Keep ``blob`` if it lies inside ``layer`` (top, bottom per column), inside the frame, and
        at least 1 mm from every earlier object (so each stays its own connected component)."""
        rows, cols, r = blob.radius(s, shape, pad_mm=1.0)
        if r.size == 0:
            return False
        inside = r < 1.0
        rr, cc = np.nonzero(inside)
        if rr.size == 0:
            return False
        zmin, zmax = (rows.start + rr.min()) * s, (rows.start + rr.max() + 1) * s
        xmin, xmax = (cols.start + cc.min()) * s, (cols.start + cc.max() + 1) * s
        if xmin < 0.3 or xmax > width_mm - 0.3 or zmax > depth_mm - 0.3:
            return False
        if layer is not None:
            top, bottom = layer
            span = slice(cols.start + cc.min(), cols.start + cc.max() + 1)
            if zmin < top[span].max() + 0.4 or zmax > bottom[span].min() - 0.4:
                return False
        halo = r < 1.0 + 1.0 / min(blob.a, blob.b)
        if (occupied[rows, cols] & halo).any():
            return False
        occupied[rows, cols] |= halo
        return True

    def random_in(layer):
        """A random centre inside ``layer`` (top, bottom per column); ``place`` checks the extent."""
        top, bottom = layer
        cx = rng.uniform(0.5, width_mm - 0.5)
        col = min(width - 1, int(cx / s))
        cz = rng.uniform(top[col], bottom[col])
        return cx, cz

    muscle_layer = (trap_top, trap_bottom)
    # --- vessels: anechoic lumen, bright wall, posterior enhancement; no SWE signal
    vessels: list[_Blob] = []
    for _ in range(_draw_count(rng, subj.counts[0])):
        for _try in range(12):
            in_fat = rng.random() < 0.5
            layer = (skin_bottom, fascia_top) if in_fat else (trap_top, bone_top)
            radius = rng.uniform(0.6, 1.2) if in_fat else rng.uniform(0.9, 2.0)
            cx, cz = random_in(layer)
            blob = _Blob(
                VESSEL_TISSUE, cx, cz, radius * rng.uniform(1.0, 1.4), radius, rng.uniform(-0.2, 0.2)
            )
            if place(blob, (layer[0] - 0.2, layer[1] + 0.2)):
                vessels.append(blob)
                break

    # --- trigger points: fibre-aligned hypoechoic ellipses, heterogeneous, sometimes in a row
    trps: list[tuple[_Blob, int, float, float]] = []
    n_trp = 0 if rng.random() < 0.4 else 1 + _draw_count(rng, [0.45, 0.3, 0.15, 0.1])
    heterogeneity = _smooth_noise(rng, shape, 0.35 / s)
    while len(trps) < n_trp:
        label = ACTIVE_TRP if rng.random() < 0.5 else LATENT_TRP
        chain = (
            1
            if n_trp - len(trps) < 2 or rng.random() < 0.6
            else min(n_trp - len(trps), int(rng.integers(2, 4)))
        )
        placed = False
        for _try in range(15):
            blobs = []
            for k in range(chain):
                # Area 16 +/- 11 mm^2, same for active and latent (Sikdar 2009); elongated along the fibres.
                area = float(np.clip(rng.normal(16.0, 11.0), 4.0, 45.0))
                aspect = rng.uniform(2.0, 3.0)
                a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
                theta = subj.fibre_angle_rad + rng.normal(0.0, math.radians(4.0))
                if k == 0:
                    cx, cz = random_in(muscle_layer)
                else:
                    prev = blobs[-1]
                    step = prev.a + a + rng.uniform(1.5, 3.0)
                    cx = prev.cx + step * math.cos(prev.theta)
                    cz = prev.cz + step * math.sin(prev.theta)
                wobble = tuple((rng.uniform(-0.05, 0.05), rng.uniform(0, 2 * np.pi)) for _ in range(2))
                blobs.append(_Blob(TRP, cx, cz, a, b, theta, wobble))
            snapshot = occupied.copy()
            if all(place(blob, muscle_layer) for blob in blobs):
                contrast = ranges.trp_contrast_db
                trps.extend((blob, label, rng.uniform(*contrast), rng.uniform(1.0, 2.0)) for blob in blobs)
                placed = True
                break
            occupied[:] = snapshot
        if not placed:
            break  # the visible muscle is too small or too crowded for more nodules

    # --- confounders (background): stiff bright fibrotic patches; soft, round or irregular dark regions
    confounders: list[tuple[_Blob, float, float]] = []
    for _ in range(_draw_count(rng, subj.counts[1])):
        for _try in range(10):
            area = rng.uniform(3.0, 20.0)
            aspect = rng.uniform(1.0, 2.0)
            a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
            theta = rng.uniform(0, np.pi)
            cx, cz = random_in(muscle_layer)
            wobble = tuple((rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * np.pi)) for _ in range(3))
            blob = _Blob(FIBROTIC, cx, cz, a, b, theta, wobble)
            if place(blob, (fascia_top - 0.5, trap_bottom + 0.5)):
                confounders.append((blob, rng.uniform(*ranges.fibrotic_contrast_db), rng.uniform(1.5, 2.5)))
                break
    for _ in range(_draw_count(rng, subj.counts[2])):
        for _try in range(10):
            area = float(np.clip(rng.normal(16.0, 9.0), 4.0, 40.0))
            irregular = rng.random() < 0.5
            aspect = rng.uniform(1.0, 1.6) if irregular else rng.uniform(1.0, 1.3)
            a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
            theta = rng.uniform(0, np.pi)  # no fibre alignment
            in_fat = rng.random() < 0.25
            layer = (skin_bottom, fascia_top) if in_fat else muscle_layer
            cx, cz = random_in(layer)
            amp = 0.25 if irregular else 0.04
            wobble = tuple((rng.uniform(-amp, amp), rng.uniform(0, 2 * np.pi)) for _ in range(3))
            blob = _Blob(SOFT_HYPOECHOIC, cx, cz, a, b, theta, wobble)
            if place(blob, layer):
                confounders.append((blob, -rng.uniform(*ranges.soft_contrast_db), rng.uniform(0.6, 1.0)))
                break

    # --- nerves: their own stream, placed last, so every draw above is what it was before nerves existed
    nerves, companions = _draw_nerves(
        _rng(seed, 5, subject, frame), subj, ranges, (trap_top, trap_bottom, deep_top, bone_top), vessels,
        occupied, s, shape,
    )  # fmt: skip

    # --- paint objects into echo, stiffness, labels
    for blob, label, contrast_db, ratio in trps:
        if label == ACTIVE_TRP:  # the active/latent difference: deterministic, no draw of its own
            contrast_db = contrast_db + active_echo_db
            ratio = ratio * active_stiffness_factor
        rows, cols, r = blob.radius(s, shape)
        w = _soft(r, edge=0.35)
        # Darker, fibrillar pattern lost, heterogeneous interior (Sikdar 2009).
        inner = subj.muscle_db - contrast_db + 2.5 * heterogeneity[rows, cols] + 0.1 * striation[rows, cols]
        db[rows, cols] = (1 - w) * db[rows, cols] + w * inner
        kpa[rows, cols] *= 1.0 + (ratio - 1.0) * w
        mask[rows, cols][r < 1.0] = label
        tissue[rows, cols][r < 1.0] = TRP
        objects.append(_describe(blob, label, contrast_db, ratio))
    for blob, contrast_db, ratio in confounders:
        rows, cols, r = blob.radius(s, shape)
        w = _soft(r, edge=0.3)
        if blob.kind == FIBROTIC:
            db[rows, cols] += contrast_db * w
        else:  # homogeneous: replaces the texture with a flat darker level, fibres faintly kept
            flat = np.where(tissue[rows, cols] == FAT, subj.fat_db, subj.muscle_db) + contrast_db
            db[rows, cols] = (1 - w) * db[rows, cols] + w * (flat + 0.5 * striation[rows, cols])
        kpa[rows, cols] *= 1.0 + (ratio - 1.0) * w
        tissue[rows, cols][r < 1.0] = blob.kind
        objects.append(_describe(blob, BACKGROUND, contrast_db, ratio))
    nerve_objects = [_paint_nerve(nerve, db, kpa, mask, tissue, subj, s) for nerve in nerves]
    for blob in vessels:
        _paint_vessel(blob, db, mask, tissue, z, x, s)
        objects.append(_describe(blob, VESSEL, -60.0, float("nan")))
    objects.extend(nerve_objects)
    for blob in companions:  # the vessels of neurovascular bundles (after the others: their bytes stay)
        _paint_vessel(blob, db, mask, tissue, z, x, s)
        objects.append({**_describe(blob, VESSEL, -60.0, float("nan")), "bundle_companion": True})

    shadowed = None
    if extra is not None:
        shadowed = _paint_shadows(extra, db, z, x, subj, top_mm=skin_bottom.max(), bottom_mm=bone_top.min())
    bmode = _form_bmode(rng, db, z, subj, extra)
    swe_off = rng.random() < 0.15
    elasto = None if swe_off else _form_swe(rng, kpa, tissue, z, x, subj, trps, ranges, shadowed)
    return {
        "bmode": bmode,
        "elasto": elasto,
        "mask": mask,
        "spacing_mm": s,
        "tissue": tissue,
        "objects": objects,
    }


def _paint_vessel(
    blob: _Blob, db: np.ndarray, mask: np.ndarray, tissue: np.ndarray, z: np.ndarray, x: np.ndarray, s: float
) -> None:
    """Anechoic lumen, bright wall, posterior enhancement (in place); label and tissue code."""
    shape = db.shape
    rows, cols, r = blob.radius(s, shape, pad_mm=2.0)
    wall = np.exp(-(((r - 1.0) * min(blob.a, blob.b) / 0.25) ** 2))
    db[rows, cols] = np.where(r < 0.95, -52.0, np.maximum(db[rows, cols], -10.0 * wall - 60 * (1 - wall)))
    mask[rows, cols][r < 1.0] = VESSEL
    tissue[rows, cols][r < 1.0] = VESSEL_TISSUE
    # Posterior acoustic enhancement: fluid attenuates less than tissue.
    lateral = np.exp(-(((x[0] - blob.cx) / (0.8 * blob.a)) ** 4))[None, :]
    behind = np.clip(z - (blob.cz + blob.b), 0.0, None)
    db += (4.0 * lateral * np.exp(-behind / 6.0) * (z > blob.cz + blob.b)).astype(np.float32)


def _describe(blob: _Blob, label: int, contrast_db: float, ratio: float) -> dict:
    return {
        "kind": blob.kind,
        "label": label,
        "cx_mm": blob.cx,
        "cz_mm": blob.cz,
        "area_mm2": blob.area_mm2,
        "contrast_db": float(contrast_db),
        "stiffness_ratio": float(ratio),
    }


def _paint_shadows(
    rng: np.random.Generator,
    db: np.ndarray,
    z: np.ndarray,
    x: np.ndarray,
    subj: Subject,
    top_mm: float,
    bottom_mm: float,
) -> np.ndarray | None:
    """Acoustic shadows (in place on ``db``): a small bright calcification, or a patch of lost probe contact at
    the skin, that darkens a vertical band below it. Returns where the SWE has no signal (None if none)."""
    width_mm = x.shape[1] * subj.spacing_mm
    no_signal = None
    for _ in range(_draw_count(rng, subj.shadow_counts)):
        cx = rng.uniform(0.1 * width_mm, 0.9 * width_mm)
        half_width = rng.uniform(0.5, 2.0)
        loss_db = rng.uniform(8.0, 20.0)
        contact_loss = rng.random() < 0.3
        start = 0.0 if contact_loss else rng.uniform(top_mm, max(top_mm + 0.5, bottom_mm))
        lateral = np.exp(-(((x - cx) / half_width) ** 4))
        below = np.clip((z - start) / 0.5, 0.0, 1.0)  # sets in over 0.5 mm
        db -= (loss_db * lateral * below).astype(np.float32)
        if not contact_loss:  # the calcification itself: a bright speck at the shadow's top
            spot = np.exp(-(((x - cx) / (0.7 * half_width)) ** 2) - ((z - start) / 0.3) ** 2)
            np.maximum(db, (-6.0 - 40.0 * (1.0 - spot)).astype(np.float32), out=db)
        dark = (lateral * below) > 0.5
        no_signal = dark if no_signal is None else no_signal | dark
    return no_signal


def _form_bmode(
    rng: np.random.Generator,
    db: np.ndarray,
    z: np.ndarray,
    subj: Subject,
    extra: np.random.Generator | None = None,
) -> np.ndarray:
    s = subj.spacing_mm
    amplitude = np.power(10.0, db / 20.0).astype(np.float32)
    # Fully developed speckle: circular complex Gaussian scatterers -> Rayleigh envelope.
    field = rng.standard_normal((*db.shape, 2), dtype=np.float32) * amplitude[..., None]
    if subj.speckle_nu is not None and extra is not None:
        # Few scatterers per resolution cell: a gamma-distributed local density makes the envelope
        # K-distributed (heavier tail, spikier speckle); nu -> infinity is Rayleigh again.
        density = extra.gamma(subj.speckle_nu, 1.0 / subj.speckle_nu, db.shape).astype(np.float32)
        field *= np.sqrt(density)[..., None]
    # Baseband PSF: axial envelope of a ``cycles``-cycle pulse (resolution = pulse length / 2), lateral Gaussian.
    wavelength = SPEED_OF_SOUND_MM_PER_US / subj.f0_mhz
    axial_sigma = subj.cycles * wavelength / 2 / 2.355 / s
    lateral_sigma = subj.lateral_fwhm_mm / 2.355 / s
    lateral = _gauss(lateral_sigma)
    if subj.lateral_sidelobe > 0.0:
        lateral = _focused_lateral(subj.lateral_fwhm_mm / s, subj.lateral_sidelobe)
    field = cv2.sepFilter2D(field, -1, lateral, _gauss(axial_sigma), borderType=cv2.BORDER_REFLECT)
    envelope = np.sqrt(field[..., 0] ** 2 + field[..., 1] ** 2 + 1e-12)
    # Round-trip attenuation exp(-2 alpha f0 z), only partly undone by time-gain compensation.
    residual_db = -2.0 * subj.alpha_db_cm_mhz * subj.f0_mhz * (z / 10.0) * (1.0 - subj.tgc_fraction)
    compensated_db = None
    if extra is not None:  # the newer presets: the TGC's gain has a ceiling (deep frames at high f0 go dark)
        round_trip_db = 2.0 * subj.alpha_db_cm_mhz * subj.f0_mhz * (z / 10.0)
        compensated_db = np.minimum(round_trip_db * subj.tgc_fraction, MAX_TGC_GAIN_DB)
        residual_db = compensated_db - round_trip_db
    if subj.tgc_error_db:  # TGC sliders off their centre: a smooth gain error over depth
        depth_fraction = z / (z[-1, 0] + 0.5 * s)
        sliders = np.linspace(0.0, 1.0, len(subj.tgc_error_db))
        residual_db = residual_db + np.interp(depth_fraction, sliders, subj.tgc_error_db).astype(np.float32)
    log_db = 20.0 * np.log10(envelope) + residual_db + subj.gain_db
    if subj.noise_floor_db is not None and extra is not None:
        # Electronic noise enters before the TGC, so the gain that undoes the attenuation amplifies it with depth.
        noise_db = subj.noise_floor_db + compensated_db + subj.gain_db
        noise_power = extra.exponential(1.0, db.shape).astype(np.float32) * np.power(10.0, noise_db / 10.0)
        log_db = 10.0 * np.log10(np.power(10.0, log_db / 10.0) + noise_power)
    grey = np.clip((log_db + subj.dynamic_range_db) / subj.dynamic_range_db, 0.0, 1.0)
    if subj.log_gamma != 1.0:  # the display's grey curve (knee) after log compression
        grey = np.power(grey, subj.log_gamma)
    # Scan conversion / display interpolation.
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), subj.display_blur_px)
    return (grey * 255.0 + 0.5).astype(np.uint8)


def _focused_lateral(fwhm_px: float, sidelobe: float) -> np.ndarray:
    """Unit-energy lateral amplitude PSF: a Gaussian mixed with the sinc of a focused rectangular aperture
    (same FWHM), whose side lobes give the lateral smear a Gaussian lacks. ``sidelobe`` = the sinc's weight."""
    first_zero = fwhm_px / 1.207  # sinc FWHM = 1.207 x its first zero
    radius = max(2, int(math.ceil(3 * first_zero)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    gauss = np.exp(-0.5 * (t / max(fwhm_px / 2.355, 1e-3)) ** 2)
    sinc = np.sinc(t / first_zero) * np.hanning(len(t) + 2)[1:-1]
    k = (1.0 - sidelobe) * gauss + sidelobe * sinc
    return (k / np.sqrt((k * k).sum())).astype(np.float32)


def _gauss(sigma_px: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma_px)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / max(sigma_px, 1e-3)) ** 2)
    return (k / np.sqrt((k * k).sum())).astype(np.float32)  # unit energy keeps speckle power = echo power


def _form_swe(
    rng: np.random.Generator,
    kpa: np.ndarray,
    tissue: np.ndarray,
    z: np.ndarray,
    x: np.ndarray,
    subj: Subject,
    trps: list,
    ranges: AppearanceRanges,
    shadowed: np.ndarray | None = None,
) -> np.ndarray:
    s = subj.spacing_mm
    h, w = kpa.shape
    width_mm, depth_mm = w * s, h * s
    # Coarse (~1-1.5 mm resolution) and noisier with depth; speed drops slightly with depth (ex vivo).
    fwhm = rng.uniform(*ranges.swe_fwhm_mm)
    kpa = cv2.GaussianBlur(kpa, (0, 0), sigmaX=fwhm / 2.355 / s)
    noise_sd = subj.swe_noise_sd + subj.swe_noise_sd_per_30mm * (z / 30.0)
    kpa = kpa * np.exp(noise_sd * _smooth_noise(rng, kpa.shape, 0.6 / s)) * (1.0 - 0.004 * z)
    kpa = kpa.astype(np.float32)

    # SWE box (literature 15-25 mm wide, or the frame), often centred on a nodule the sonographer examines.
    box_w = min(rng.uniform(*ranges.swe_box_width_mm), 0.9 * width_mm)
    box_h = min(rng.uniform(*ranges.swe_box_height_mm), depth_mm - 1.0)
    top_low, top_high = ranges.swe_box_top_mm
    top = rng.uniform(top_low, max(top_low + 0.1, min(top_high, depth_mm - box_h)))
    if trps and rng.random() < ranges.swe_on_trp:
        jitter = ranges.swe_on_trp_jitter_mm
        centre = trps[int(rng.integers(len(trps)))][0].cx + rng.uniform(-jitter, jitter)
    else:
        centre = rng.uniform(box_w / 2, width_mm - box_w / 2)
    left = float(np.clip(centre - box_w / 2, 0.0, width_mm - box_w))
    valid = (z >= top) & (z < top + box_h) & (x >= left) & (x < left + box_w)

    # No signal: fluid (vessels), behind bone, and random "black hole" voids.
    no_signal = np.isin(tissue, (VESSEL_TISSUE, BONE, SHADOW)).astype(np.uint8)
    no_signal = cv2.dilate(no_signal, np.ones((3, 3), np.uint8), iterations=max(1, int(0.3 / s))) > 0
    if shadowed is not None:
        no_signal |= shadowed
    for _ in range(_draw_count(rng, [0.6, 0.25, 0.15])):
        void = _Blob(
            0, rng.uniform(left, left + box_w), rng.uniform(top, top + box_h), *rng.uniform(0.8, 2.5, 2), 0.0
        )
        rows, cols, r = void.radius(s, kpa.shape)
        no_signal[rows, cols] |= r < 1.0
    out = np.where(valid & ~no_signal, kpa, np.nan).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------- dataset
MANIFEST_COLUMNS = ("sample_id", "subject_id", "bmode", "elasto", "mask", "spacing_mm")


def write_frame_files(root: Path, sample: dict, sample_id: str, subject_id: str) -> dict[str, str]:
    """One generated frame's files (bmode/, masks/, elasto/) below ``root``; its manifest row."""
    write_png(root / "bmode" / f"{sample_id}.png", sample["bmode"])
    write_png(root / "masks" / f"{sample_id}.png", sample["mask"])
    elasto = ""
    if sample["elasto"] is not None:
        elasto = f"elasto/{sample_id}.tif"
        write_tiff(root / elasto, sample["elasto"])
    return {
        "sample_id": sample_id,
        "subject_id": subject_id,
        "bmode": f"bmode/{sample_id}.png",
        "elasto": elasto,
        "mask": f"masks/{sample_id}.png",
        "spacing_mm": f"{sample['spacing_mm']:.5f}",
    }


def _write_subject(args: tuple[Path, int, int, int, int, int, str, float, float]) -> list[dict[str, str]]:
    root, seed, subject, frames, height, width, appearance, stiffness_factor, echo_db = args
    return [
        write_frame_files(
            root,
            generate_frame(seed, subject, frame, height, width, appearance, stiffness_factor, echo_db),
            f"s{subject:03d}_f{frame:03d}",
            f"s{subject:03d}",
        )
        for frame in range(frames)
    ]


def check_synth_arguments(
    out: Path, subjects: int, frames_per_subject: int, seed: int, height: int, width: int
) -> None:
    """ValueError naming ``out`` for settings no generator can honour (checked before anything is written)."""
    if subjects < 1 or frames_per_subject < 1:
        raise ValueError(
            f"{out}: need at least one subject and one frame (got {subjects}, {frames_per_subject})"
        )
    if height < 32 or width < 32:
        raise ValueError(f"{out}: frames must be at least 32x32 pixels (got {height}x{width})")
    if seed < 0:
        raise ValueError(f"{out}: seed must be non-negative (got {seed})")


def write_synthetic_dataset(
    out: Path,
    subjects: int,
    frames_per_subject: int,
    seed: int,
    height: int = 256,
    width: int = 256,
    workers: int = 1,
    appearance: str = "literature",
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> Path:
    """Write a contract dataset (dataset.yaml, manifest.csv, bmode/, elasto/, masks/) to ``out``.

    ``appearance``: a preset of ``APPEARANCES`` ("literature", "wide", "shifted"); with "wide" and "shifted"
    frame size and pixel size vary per subject (each manifest row has its own spacing_mm).
    ``active_stiffness_factor``, ``active_echo_db``: the active/latent difference (``generate_frame``);
    dataset.yaml records both, and the name carries them when they differ from the defaults."""
    check_synth_arguments(out, subjects, frames_per_subject, seed, height, width)
    appearance_ranges(appearance)  # an unknown preset fails before anything is written
    stiffness_factor, echo_db = check_active_latent_effect(active_stiffness_factor, active_echo_db)
    out = Path(out)
    for sub in ("bmode", "elasto", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [
        (out, seed, subject, frames_per_subject, height, width, appearance, stiffness_factor, echo_db)
        for subject in range(subjects)
    ]
    if workers > 1:
        with multiprocessing.get_context().Pool(min(workers, subjects)) as pool:
            per_subject = pool.map(_write_subject, jobs, chunksize=1)
    else:
        per_subject = [_write_subject(job) for job in jobs]
    generator = {"name": "tpnet.data.synth", "version": GENERATOR_VERSION, "seed": seed}
    name = f"synthetic-trapezius-s{seed}"
    if appearance != "literature":  # literature datasets keep the name they always had
        generator["appearance"] = appearance
        name += f"-{appearance}"
    generator["active_stiffness_factor"] = stiffness_factor
    generator["active_echo_db"] = echo_db
    name += _effect_suffix(stiffness_factor, echo_db)
    # synthetic: true tells readers (the model card) that no patient is behind these frames.
    spec = {
        "name": name,
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "synthetic": True,
        "generator": generator,
    }
    return write_contract_files(out, spec, MANIFEST_COLUMNS, per_subject)


def write_contract_files(
    root: Path, spec: dict, columns: Sequence[str], per_subject: Iterable[list[dict[str, str]]]
) -> Path:
    """dataset.yaml (``spec``) and manifest.csv (``columns``, the rows of each subject in turn) of a generated
    dataset, in the one layout every tpnet generator writes; ``root``."""
    (root / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    return root


def check_active_latent_effect(stiffness_factor: float, echo_db: float) -> tuple[float, float]:
    """The effect sizes as floats; ValueError for a factor that is not a positive finite number or an echo
    difference that is not finite (a stiffness ratio must stay positive, an image finite)."""
    factor, echo = float(stiffness_factor), float(echo_db)
    if not (math.isfinite(factor) and factor > 0.0):
        raise ValueError(f"active_stiffness_factor must be a positive number (got {stiffness_factor!r})")
    if not math.isfinite(echo):
        raise ValueError(f"active_echo_db must be a finite number of dB (got {echo_db!r})")
    return factor, echo


def _effect_suffix(stiffness_factor: float, echo_db: float) -> str:
    """Empty at the defaults (older names stay valid), else both values exactly (repr): caches never mix."""
    if stiffness_factor == DEFAULT_ACTIVE_STIFFNESS_FACTOR and echo_db == DEFAULT_ACTIVE_ECHO_DB:
        return ""
    return f"-active-stiffness{float(stiffness_factor)!r}x-echo{float(echo_db)!r}db"


def synthetic_dataset_name(
    subjects: int,
    frames_per_subject: int,
    seed: int,
    height: int,
    width: int,
    appearance: str = "literature",
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> str:
    """Cache folder name; the appearance is part of it unless it is "literature", the active/latent effect
    sizes unless they are the defaults (older names stay valid)."""
    name = f"synth-v{GENERATOR_VERSION}-seed{seed}-{subjects}x{frames_per_subject}-{height}x{width}"
    if appearance != "literature":
        name += f"-{appearance}"
    return name + _effect_suffix(*check_active_latent_effect(active_stiffness_factor, active_echo_db))


def ensure_synthetic_dataset(
    cache_dir: Path,
    subjects: int,
    frames_per_subject: int,
    seed: int,
    height: int = 256,
    width: int = 256,
    workers: int = 1,
    appearance: str = "literature",
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> Path:
    """Generate once into ``cache_dir/<name from the arguments>`` and reuse it afterwards.

    Generation goes to a hidden temp folder renamed at the end, so a killed run never leaves a
    folder that looks complete."""
    cache_dir = Path(cache_dir)
    appearance_ranges(appearance)
    effect = check_active_latent_effect(active_stiffness_factor, active_echo_db)
    target = cache_dir / synthetic_dataset_name(
        subjects, frames_per_subject, seed, height, width, appearance, *effect
    )
    if (target / "manifest.csv").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}.tmp-"))
    try:
        write_synthetic_dataset(
            tmp, subjects, frames_per_subject, seed, height, width, workers, appearance, *effect
        )
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.csv").is_file():  # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
