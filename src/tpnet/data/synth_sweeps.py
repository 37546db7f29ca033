"""Synthetic ultrasound sweeps (issue #17): stacks of parallel B-mode + SWE frames as a probe is moved across the
upper trapezius, with 3-D labels, written as contract-v2 volume rows.

One 3-D scene per sweep, sampled slice by slice (docs/synthetic-data.md, "Sweeps (issue #17)", lists every
number and its source). Axes: lateral x (columns), depth y (rows), sweep z (the probe's path, across the image
plane). The scene: skin / fat / fascia / trapezius / deep muscle / bone layers whose depths drift slowly along
z; fibres at one in-plane angle per subject (and a small out-of-plane yaw); 0-2 taut bands (a few mm across,
along the fibres) each carrying 1-3 trigger-point ellipsoids elongated along the fibres; look-alike ellipsoids;
vessels and nerves as tubes crossing the image plane whose centres drift slowly with z. Each slice is formed the
way tpnet.data.synth forms a frame (echogenicity x complex scatterers -> PSF -> envelope -> attenuation/TGC ->
log compression; SWE blurred, noisy, NaN outside its box), reusing its helpers; the scatterers and textures of
one slice continue into the next (AR(1) across the sweep), with the speckle's correlation set by the slice gap
against the elevational beam width. Free-hand options: ``jitter_mm`` (the true positions are noisy, the file
says uniform spacing) and ``drop_p`` (frames dropped, the true positions skip).

Streams: the subject's body and scanner from (seed, 17, 1, subject); each sweep's scene from
(seed, 17, 2, subject, sweep), its slice randomness (speckle, textures, SWE noise) from (seed, 17, 3, subject,
sweep) and its true slice positions from (seed, 17, 4, subject, sweep). So the scene does not depend on jitter or
dropped frames, and any number of workers writes the same bytes.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.encoding import shear_speed_to_kpa
from tpnet.data.synth import (
    _LITERATURE_COUNTS,
    ACTIVE_TRP,
    BONE,
    DEEP_MUSCLE,
    DEFAULT_ACTIVE_ECHO_DB,
    DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    FASCIA,
    FAT,
    FIBROTIC,
    LATENT_TRP,
    MUSCLE,
    NEAR_FIELD,
    NERVE,
    NERVE_EPINEURIUM_MM,
    NERVE_FASCICLE_MM,
    NERVE_FLATTENING,
    NERVE_GAP_TO_VESSEL_MM,
    NERVE_SEPTUM_MM,
    NERVE_STIFFNESS_RATIO,
    SHADOW,
    SKIN,
    SOFT_HYPOECHOIC,
    SPEED_OF_SOUND_MM_PER_US,
    TRP,
    VESSEL,
    VESSEL_TISSUE,
    Subject,
    _Blob,
    _draw_count,
    _fascicles,
    _gauss,
    _mark,
    _Nerve,
    _nerve_fits,
    _paint_nerve,
    _paint_vessel,
    _smooth_noise,
    _soft,
    _streaks,
    appearance_ranges,
    check_active_latent_effect,
    write_contract_files,
)

GENERATOR_NAME = "tpnet.data.synth_sweeps"
GENERATOR_VERSION = 1
STREAM = 17  # first key of every random stream here (the issue's number): never one of synth.py's (1-5)
FILE_FORMATS = ("npy", "nifti", "nrrd", "dicom")
MANIFEST_COLUMNS = (
    "sample_id", "subject_id", "kind", "bmode", "elasto", "mask", "spacing_mm", "slice_spacing_mm",
)  # fmt: skip

# Defaults: small enough to train on a CPU in minutes. 0.2 mm pixels: the CPU demo's training resolution
# (configs/experiment/cpu_demo.yaml; docs/synthetic-data.md's learnability runs), so nothing needs resampling;
# 128 px = a 25.6 mm field, deep enough for skin, fat and most of the trapezius. 0.5 mm slices: a third of the elevational beam width (ELEVATION_FWHM_MM, 1.5 mm
# on average), so the sweep samples what the beam resolves, and the smallest trigger point (2 mm across the
# sweep) spans 4 slices; a 30 Hz free-hand sweep at 15 mm/s gives the same spacing. 48 slices = a 23.5 mm sweep,
# about the field's width (a cube-like volume).
DEFAULT_SUBJECTS = 12
DEFAULT_SLICES = 48
DEFAULT_HEIGHT = DEFAULT_WIDTH = 128
DEFAULT_SPACING_MM = 0.2
DEFAULT_SLICE_SPACING_MM = 0.5

# --- the beam across the image plane and the slice-to-slice correlation of what it sees
# Pulse-echo elevational FWHM ("slice thickness") of a 7-12 MHz linear array at its lens focus, per subject.
# Assumption: 1-D arrays focus in elevation with a fixed lens; no source in the facts file gives the width.
ELEVATION_FWHM_MM = (1.0, 2.0)
# Exponential correlation lengths (mm along the sweep) of the tissue textures: muscle fascicles ~1-2 mm across,
# fat septa and fascia longer, a nodule's heterogeneity as fine as its 0.35 mm in-plane grain; the stiffness
# variation as wide across as in plane (3 mm). All assumptions.
TEXTURE_CORRELATION_MM = {
    "fibres": 1.5, "deep_fibres": 1.5, "septa": 2.0, "fascia": 3.0, "heterogeneity": 0.5, "stiffness": 3.0,
}  # fmt: skip

# --- anatomy along the sweep (assumptions: boundaries change over centimetres, not millimetres)
LAYER_SWEEP_WAVELENGTH_MM = (40.0, 120.0)  # the in-plane undulations move laterally as the probe moves
FAT_TREND_PER_MM = 0.01  # fat thickness changes by up to +/-1 % per mm along the sweep
TRAPEZIUS_TREND_PER_MM = 0.005
FIBRE_YAW_DEG = 6.0  # fibres leave the image plane by up to this angle (probe held along them, not exactly)

# --- taut bands and trigger points
BAND_COUNTS = (0.2, 0.55, 0.25)  # bands per sweep: P(0), P(1), P(2) (assumption, see the docs)
TRPS_PER_BAND = (0.45, 0.35, 0.2)  # 1, 2 or 3 nodules along a band ("several in a row", Sikdar 2009)
BAND_HALF_DEPTH_MM = (1.0, 2.0)  # band cross-section: half-thickness in depth ...
BAND_HALF_WIDTH_MM = (1.5, 3.0)  # ... and half-width across the sweep: "a band of fibres of a few mm"
BAND_STIFFNESS_RATIO = (1.0, 1.5)  # band / muscle; MRE taut bands about 2x (Chen 2016) is the upper end
BAND_ECHO_DB = (0.0, 2.0)  # darker than muscle: barely visible on B-mode (assumption)
TRP_GAP_MM = (1.5, 3.0)  # wall-to-wall distance of neighbouring nodules along a band (as synth.py)
# Extent across the sweep (the third axis, not measured by Sikdar 2009's in-plane area): the nodule's section
# across the fibres is taken as an oval as thick as its in-plane short axis b in depth and 1-2 x b wide along the
# muscle sheet (a taut band is a group of fascicles side by side in a flat muscle), at least 1 mm (2 mm across:
# smaller would not be palpable) and at most its half-length along the fibres (it stays elongated along them).
TRP_WIDTH_RATIO = (1.0, 2.0)
TRP_MIN_HALF_WIDTH_MM = 1.0

# --- tubes
TUBE_SLOPE_LATERAL = (
    0.3  # vessels/nerves cross the image plane up to ~17 deg off the sweep axis, laterally ...
)
TUBE_SLOPE_DEPTH = 0.1  # ... and ~6 deg in depth
TUBE_DRIFT_MM = (0.0, 0.5)  # a slow wiggle of the centre ...
TUBE_DRIFT_WAVELENGTH_MM = (20.0, 60.0)  # ... over centimetres
SWE_VOID_COUNTS = (0.6, 0.25, 0.15)  # "black holes" per 10 mm of sweep (synth.py's per-frame table)
SWEEP_SPEED_MM_PER_S = 10.0  # a motorised sweep: the DICOM's FrameTime = slice spacing / speed
OBJECT_GAP_MM = 1.0  # least distance between objects (each stays its own 3-D connected component)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


# ------------------------------------------------------------------------------------------ positions
def sweep_positions_mm(
    rng: np.random.Generator,
    slices: int,
    slice_spacing_mm: float,
    jitter_mm: float = 0.0,
    drop_p: float = 0.0,
) -> np.ndarray:
    """True positions (mm along the sweep) of the ``slices`` frames a sweep keeps: nominal positions
    k x slice_spacing_mm, each dropped with probability ``drop_p`` (the next kept one skips ahead), plus
    independent Gaussian out-of-plane noise of sd ``jitter_mm``. Defaults: a motorised sweep, 0, s, 2s, ..."""
    kept: list[int] = []
    nominal = 0
    while len(kept) < slices:
        if drop_p == 0.0 or rng.random() >= drop_p:
            kept.append(nominal)
        nominal += 1
    positions = np.asarray(kept, np.float64) * slice_spacing_mm
    if jitter_mm > 0.0:
        positions = positions + rng.normal(0.0, jitter_mm, slices)
    return positions


def speckle_correlation(gap_mm: float, elevation_fwhm_mm: float) -> float:
    """Correlation of the complex scatterer field between two image planes ``gap_mm`` apart: the overlap of a
    Gaussian pulse-echo elevational beam profile with itself shifted by the gap, exp(-gap^2 / (4 sigma^2)),
    sigma = FWHM / 2.355 (the Gaussian decorrelation model of sensorless free-hand 3-D ultrasound, e.g. Gee et
    al. 2005); the envelope's intensity correlation is its square."""
    sigma = elevation_fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    return math.exp(-(gap_mm**2) / (4.0 * sigma**2))


def _continue(previous: np.ndarray | None, fresh: np.ndarray, rho: float) -> np.ndarray:
    """AR(1) across the sweep: rho x the previous slice's field + sqrt(1 - rho^2) x a fresh one (unit variance
    kept)."""
    if previous is None or rho <= 0.0:
        return fresh
    return (rho * previous + math.sqrt(max(0.0, 1.0 - rho * rho)) * fresh).astype(np.float32)


# -------------------------------------------------------------------------------------------- subject
@functools.lru_cache(maxsize=64)
def _subject(seed: int, subject: int, spacing_mm: float) -> tuple[Subject, float, float]:
    """(body and scanner, elevational FWHM mm, fibre yaw rad) of one subject, from synth.py's literature ranges;
    the pixel size is the caller's (sweeps are made at one spacing)."""
    ranges = appearance_ranges("literature")
    rng = _rng(seed, STREAM, 1, subject)
    speed = float(np.clip(rng.normal(3.35, 0.79), 2.3, 4.6))  # m/s, normal trapezius (Hao 2023)
    angle = math.radians(_uniform(rng, ranges.fibre_angle_deg)) * float(rng.choice([-1.0, 1.0]))
    subj = Subject(
        spacing_mm=float(spacing_mm),
        skin_mm=_uniform(rng, ranges.skin_mm),
        fat_mm=_uniform(rng, ranges.fat_mm),
        fascia_mm=_uniform(rng, ranges.fascia_mm),
        trapezius_mm=_uniform(rng, ranges.trapezius_mm),
        deep_muscle_mm=_uniform(rng, ranges.deep_muscle_mm),
        fibre_angle_rad=angle,
        undulation=(),  # the sweep's layers have their own (_Layers)
        muscle_db=_uniform(rng, ranges.muscle_db),
        fat_db=_uniform(rng, ranges.fat_db),
        gain_db=_uniform(rng, ranges.gain_db),
        f0_mhz=_uniform(rng, ranges.f0_mhz),
        cycles=_uniform(rng, ranges.cycles),
        lateral_fwhm_mm=_uniform(rng, ranges.lateral_fwhm_mm),
        alpha_db_cm_mhz=_uniform(rng, ranges.alpha_db_cm_mhz),
        tgc_fraction=_uniform(rng, ranges.tgc_fraction),
        dynamic_range_db=_uniform(rng, ranges.dynamic_range_db),
        muscle_kpa=float(shear_speed_to_kpa(speed**2)),  # E = 3 rho c^2
        fat_kpa=float(rng.uniform(8.0, 18.0)),
        deep_kpa_ratio=float(rng.uniform(0.8, 1.2)),
    )
    elevation_fwhm = _uniform(rng, ELEVATION_FWHM_MM)
    yaw = math.radians(rng.uniform(-FIBRE_YAW_DEG, FIBRE_YAW_DEG))
    return subj, elevation_fwhm, yaw


# --------------------------------------------------------------------------------------------- layers
@dataclass(frozen=True)
class _Layers:
    """Layer boundaries (mm deep) as smooth functions of lateral x and sweep z: synth.py's per-frame layout with
    undulations that move laterally along the sweep and thicknesses that trend slowly."""

    gel_mm: float
    skin_mm: float
    fat_mm: float
    fascia_mm: float
    trapezius_mm: float
    deep_muscle_mm: float
    bone_mm: float
    fat_trend: float  # relative thickness change per mm along the sweep
    trapezius_trend: float
    tilt: float  # slope of the deep boundaries across the frame (probe tilt)
    waves: tuple[
        tuple[float, float, float, float], ...
    ]  # (amplitude mm, lateral wavelength, sweep wavelength, phase)
    centre_lateral_mm: float
    centre_sweep_mm: float

    def boundaries(self, lateral_mm: np.ndarray, sweep_mm: np.ndarray | float) -> dict[str, np.ndarray]:
        """Depth of each boundary at (lateral, sweep), broadcast: (W,) with a scalar, or (1, W) with (Z, 1)."""

        def wave(i: int) -> np.ndarray:
            amp, wl_x, wl_z, phase = self.waves[i]
            return amp * np.sin(2 * np.pi * lateral_mm / wl_x + 2 * np.pi * sweep_mm / wl_z + phase)

        along = np.asarray(sweep_mm, np.float64) - self.centre_sweep_mm
        across = lateral_mm - self.centre_lateral_mm
        skin_bottom = self.gel_mm + self.skin_mm + 0.1 * wave(0)
        fat = self.fat_mm * np.clip(1.0 + self.fat_trend * along, 0.5, 1.5)
        fascia_top = skin_bottom + fat + wave(1)
        trap_top = fascia_top + self.fascia_mm
        trapezius = self.trapezius_mm * np.clip(1.0 + self.trapezius_trend * along, 0.7, 1.3)
        trap_bottom = trap_top + trapezius + wave(2) + self.tilt * across * 0.5
        deep_top = trap_bottom + 1.0
        bone_top = deep_top + self.deep_muscle_mm + wave(3) + self.tilt * across
        names = (
            "skin_bottom",
            "fascia_top",
            "trap_top",
            "trap_bottom",
            "deep_top",
            "bone_top",
            "bone_bottom",
        )
        values = (skin_bottom, fascia_top, trap_top, trap_bottom, deep_top, bone_top, bone_top + self.bone_mm)
        shape = np.broadcast_shapes(np.shape(lateral_mm), np.shape(sweep_mm))
        return {
            name: np.broadcast_to(v, shape).astype(np.float32) for name, v in zip(names, values, strict=True)
        }


def _draw_layers(rng: np.random.Generator, subj: Subject, width_mm: float, length_mm: float) -> _Layers:
    waves = tuple(
        (
            float(rng.uniform(0.1, 0.6)),  # amplitude and lateral wavelength as synth.py's undulations
            float(rng.uniform(15.0, 45.0)),
            _uniform(rng, LAYER_SWEEP_WAVELENGTH_MM) * float(rng.choice([-1.0, 1.0])),
            float(rng.uniform(0, 2 * math.pi)),
        )
        for _ in range(4)
    )
    return _Layers(
        gel_mm=float(rng.uniform(0.1, 0.3)),
        skin_mm=subj.skin_mm,
        fat_mm=subj.fat_mm,
        fascia_mm=subj.fascia_mm,
        trapezius_mm=subj.trapezius_mm,
        deep_muscle_mm=subj.deep_muscle_mm,
        bone_mm=float(rng.uniform(0.5, 0.9)),
        fat_trend=float(rng.uniform(-FAT_TREND_PER_MM, FAT_TREND_PER_MM)),
        trapezius_trend=float(rng.uniform(-TRAPEZIUS_TREND_PER_MM, TRAPEZIUS_TREND_PER_MM)),
        tilt=math.tan(math.radians(rng.uniform(-2.0, 2.0))),
        waves=waves,
        centre_lateral_mm=width_mm / 2,
        centre_sweep_mm=length_mm / 2,
    )


# ------------------------------------------------------------------------------------------ ellipsoids
def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _frame_along(direction: np.ndarray) -> np.ndarray:
    """Rows e1 = ``direction``, e3 = the sweep axis made orthogonal to it, e2 = e3 x e1 (about the depth)."""
    e1 = _unit(np.asarray(direction, np.float64))
    e3 = _unit(np.array([0.0, 0.0, 1.0]) - e1[2] * e1)
    return np.stack([e1, np.cross(e3, e1), e3])


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return (q * np.sign(np.diag(r))).T  # rows: three orthonormal axes, uniformly oriented


@dataclass(frozen=True)
class _Ellipsoid:
    """A trigger point or a look-alike in mm: centre (lateral, depth, sweep), axes (rows: unit vectors e1, e2,
    e3), semi-axes along them, an irregular outline (angular harmonics around e3) and how it is painted."""

    kind: int  # tissue code: TRP, FIBROTIC or SOFT_HYPOECHOIC
    centre: tuple[float, float, float]
    axes: np.ndarray
    semi: tuple[float, float, float]
    wobble: tuple[tuple[float, float], ...]
    label: int  # mask label (BACKGROUND for look-alikes)
    contrast_db: float  # TrP/soft: darker by; fibrotic: brighter by
    ratio: float  # stiffness / surrounding tissue
    band: int = -1  # index of the taut band a TrP sits on

    def half_extent(self, grow_mm: float = 0.0) -> np.ndarray:
        """Half-size along lateral, depth and sweep (exact for the ellipsoid, padded for the wobble)."""
        semi = np.asarray(self.semi) + grow_mm
        extent = np.sqrt(((semi[:, None] * self.axes) ** 2).sum(axis=0))
        return extent * (1.0 + sum(abs(a) for a, _ in self.wobble))

    def radius(
        self, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray | float, grow_mm: float = 0.0
    ) -> np.ndarray:
        """Normalised radius (< 1 inside) at offsets from the centre (broadcast)."""
        a, b, c = (s + grow_mm for s in self.semi)
        e1, e2, e3 = self.axes
        u = (dx * e1[0] + dy * e1[1] + dz * e1[2]) / a
        v = (dx * e2[0] + dy * e2[1] + dz * e2[2]) / b
        w = (dx * e3[0] + dy * e3[1] + dz * e3[2]) / c
        r = np.sqrt(u * u + v * v + w * w)
        if self.wobble:
            phi = np.arctan2(v, u)
            r = r / (1.0 + sum(amp * np.cos((k + 2) * phi + ph) for k, (amp, ph) in enumerate(self.wobble)))
        return r.astype(np.float32)

    def in_slice(self, sweep_mm: float, s: float, shape: tuple[int, int], pad_mm: float = 0.5):
        """(row slice, col slice, r) of its cross-section with the slice at ``sweep_mm``; None if it misses."""
        ext = self.half_extent()
        cx, cy, cz = self.centre
        if abs(sweep_mm - cz) > ext[2] + pad_mm:
            return None
        rows = _span(cy, ext[1] + pad_mm, s, shape[0])
        cols = _span(cx, ext[0] + pad_mm, s, shape[1])
        if rows.start >= rows.stop or cols.start >= cols.stop:
            return None
        dy = ((np.arange(rows.start, rows.stop) + 0.5) * s - cy)[:, None]
        dx = ((np.arange(cols.start, cols.stop) + 0.5) * s - cx)[None, :]
        return rows, cols, self.radius(dx, dy, sweep_mm - cz)

    def describe(self) -> dict:
        a, b, c = self.semi
        kind = {TRP: "trp", FIBROTIC: "fibrotic", SOFT_HYPOECHOIC: "soft_hypoechoic"}[self.kind]
        return {
            "kind": kind,
            "label": int(self.label),
            "centre_mm": [round(float(v), 4) for v in self.centre],  # (lateral, depth, sweep)
            "semi_axes_mm": [round(float(v), 4) for v in self.semi],  # along the fibres, in depth, across
            "axis_mm": [round(float(v), 5) for v in self.axes[0]],  # unit vector of the long axis
            "area_mm2": round(math.pi * a * b, 4),  # the in-plane section through the centre
            "volume_mm3": round(4.0 / 3.0 * math.pi * a * b * c, 4),
            "contrast_db": round(float(self.contrast_db), 4),
            "stiffness_ratio": round(float(self.ratio), 4),
            "band": int(self.band),
        }


def _span(centre: float, half: float, s: float, size: int) -> slice:
    return slice(max(0, int((centre - half) / s)), min(size, int((centre + half) / s) + 2))


@dataclass(frozen=True)
class _Band:
    """A taut band: a straight bundle of fibres through ``point`` along ``axes[0]`` (the fibres), its
    cross-section an ellipse of half-sizes ``half_depth`` (along e2) and ``half_width`` (along e3)."""

    point: tuple[float, float, float]
    axes: np.ndarray
    half_depth: float
    half_width: float
    ratio: float
    echo_db: float

    def weight(self, lateral: np.ndarray, depth: np.ndarray, sweep_mm: float) -> np.ndarray:
        """Soft 0-1 membership over a slice (broadcast (H, 1) x (1, W))."""
        d = (lateral - self.point[0], depth - self.point[1], sweep_mm - self.point[2])
        _, e2, e3 = self.axes
        v = (d[0] * e2[0] + d[1] * e2[1] + d[2] * e2[2]) / self.half_depth
        w = (d[0] * e3[0] + d[1] * e3[1] + d[2] * e3[2]) / self.half_width
        return _soft(np.sqrt(v * v + w * w).astype(np.float32), edge=0.5)


# ---------------------------------------------------------------------------------------------- tubes
@dataclass(frozen=True)
class _Path:
    """A tube's centre along the sweep: straight and oblique, with a slow wiggle."""

    lateral_mm: float  # at centre_sweep_mm
    depth_mm: float
    centre_sweep_mm: float
    slope_lateral: float  # mm per mm of sweep
    slope_depth: float
    drift_mm: float
    drift_wavelength_mm: float
    drift_phase: float

    def at(self, sweep_mm: float) -> tuple[float, float]:
        t = sweep_mm - self.centre_sweep_mm
        phase = 2 * math.pi * sweep_mm / self.drift_wavelength_mm + self.drift_phase
        return (
            self.lateral_mm + self.slope_lateral * t + self.drift_mm * math.sin(phase),
            self.depth_mm + self.slope_depth * t + 0.3 * self.drift_mm * math.cos(phase),
        )

    def shifted(self, lateral_mm: float, depth_mm: float) -> _Path:
        return replace(self, lateral_mm=self.lateral_mm + lateral_mm, depth_mm=self.depth_mm + depth_mm)


def _draw_path(
    rng: np.random.Generator, lateral: float, depth: float, centre_sweep: float, slope: float = 1.0
):
    return _Path(
        lateral, depth, centre_sweep,
        slope * float(rng.uniform(-TUBE_SLOPE_LATERAL, TUBE_SLOPE_LATERAL)),
        slope * float(rng.uniform(-TUBE_SLOPE_DEPTH, TUBE_SLOPE_DEPTH)),
        _uniform(rng, TUBE_DRIFT_MM), _uniform(rng, TUBE_DRIFT_WAVELENGTH_MM), float(rng.uniform(0, 2 * math.pi)),
    )  # fmt: skip


@dataclass(frozen=True)
class _VesselTube:
    path: _Path
    a: float  # cross-section semi-axes (a along theta) of the tube itself
    b: float
    theta: float
    bundle_companion: bool = False

    def blob(self, sweep_mm: float) -> _Blob:
        """Its section in the slice at ``sweep_mm`` (an oblique tube cuts a longer oval)."""
        cx, cy = self.path.at(sweep_mm)
        stretch_x = math.sqrt(1.0 + self.path.slope_lateral**2)
        stretch_y = math.sqrt(1.0 + self.path.slope_depth**2)
        return _Blob(VESSEL_TISSUE, cx, cy, self.a * stretch_x, self.b * stretch_y, self.theta)

    def describe(self) -> dict:
        return {
            "kind": "vessel",
            "label": VESSEL,
            "centre_mm": _path_centre(self.path),
            "slope": [round(self.path.slope_lateral, 4), round(self.path.slope_depth, 4)],
            "semi_axes_mm": [round(self.a, 4), round(self.b, 4)],
            "bundle_companion": self.bundle_companion,
        }


@dataclass(frozen=True)
class _NerveTube:
    path: _Path
    section: _Nerve  # synth.py's cross-section nerve (honeycomb); its centre is replaced per slice

    def nerve(self, sweep_mm: float) -> _Nerve:
        cx, cy = self.path.at(sweep_mm)
        return replace(self.section, cx=cx, cz=cy)

    def describe(self) -> dict:
        n = self.section
        return {
            "kind": "nerve",
            "label": NERVE,
            "centre_mm": _path_centre(self.path),
            "slope": [round(self.path.slope_lateral, 4), round(self.path.slope_depth, 4)],
            "diameter_mm": round(2 * math.sqrt(n.a * n.b), 4),
            "fascicles": int(len(n.fascicles)),
            "beside_vessel": bool(n.beside_vessel),
        }


def _path_centre(path: _Path) -> list[float]:
    return [round(path.lateral_mm, 4), round(path.depth_mm, 4), round(path.centre_sweep_mm, 4)]


# ---------------------------------------------------------------------------------------------- scene
@dataclass(frozen=True)
class _SweBox:
    left_mm: float
    top_mm: float
    width_mm: float
    height_mm: float
    fwhm_mm: float
    voids: tuple[
        tuple[float, float, float, float, float, float], ...
    ]  # centre (x, y, z), semi-axes (x, y, z)


@dataclass(frozen=True)
class _Scene:
    layers: _Layers
    bands: tuple[_Band, ...]
    trps: tuple[_Ellipsoid, ...]
    lookalikes: tuple[_Ellipsoid, ...]
    vessels: tuple[_VesselTube, ...]
    nerves: tuple[_NerveTube, ...]
    swe: _SweBox
    septa_angle_rad: float


class _Grid:
    """Where objects are placed: the frame's pixels x nominal sweep positions at most 0.5 mm apart, independent
    of jitter and dropped frames (so they change where the slices fall, not the scene)."""

    def __init__(self, layers: _Layers, s: float, shape: tuple[int, int], length_mm: float, slice_mm: float):
        self.s, self.shape, self.length_mm = s, shape, length_mm
        self.dz = min(slice_mm, 0.5)
        self.sweep = np.arange(0.0, length_mm + 1e-9, self.dz)
        self.lateral = (np.arange(shape[1]) + 0.5) * s
        self.depth = (np.arange(shape[0]) + 0.5) * s
        self.bounds = layers.boundaries(self.lateral[None, :], self.sweep[:, None])  # (Z, W) each
        self.occupied = np.zeros((len(self.sweep), *shape), bool)
        # The gap kept between objects: 1 mm, and more than a slice so neighbouring slices never join them.
        self.gap_mm = max(OBJECT_GAP_MM, 1.5 * slice_mm)

    def fits_ellipsoid(self, e: _Ellipsoid, top: str, bottom: str, margin_mm: float = 0.4) -> bool:
        """Inside the frame and the sweep, between boundaries ``top`` and ``bottom`` (names of _Layers) by
        ``margin_mm``, and clear of every placed object's halo."""
        ext = e.half_extent()
        cx, cy, cz = e.centre
        width_mm, depth_mm = self.shape[1] * self.s, self.shape[0] * self.s
        if cx - ext[0] < 0.3 or cx + ext[0] > width_mm - 0.3 or cy + ext[1] > depth_mm - 0.3:
            return False
        if cz - ext[2] < 0.0 or cz + ext[2] > self.length_mm:
            return False
        box = self._box(e, 0.0)
        if box is None:
            return False
        zs, rows, cols, r = box
        inside = r < 1.0
        if not inside.any():
            return False
        depth = self.depth[rows][None, :, None]
        low = self.bounds[top][zs, cols][:, None, :] + margin_mm
        high = self.bounds[bottom][zs, cols][:, None, :] - margin_mm
        if (inside & ((depth < low) | (depth > high))).any():
            return False
        return not (self.occupied[zs, rows, cols] & inside).any()

    def mark_ellipsoid(self, e: _Ellipsoid) -> tuple | None:
        """Mark its halo (grown by the gap) as occupied; returns what ``restore`` needs to undo it."""
        box = self._box(e, self.gap_mm)
        if box is None:
            return None
        zs, rows, cols, r = box
        saved = (zs, rows, cols, self.occupied[zs, rows, cols].copy())
        self.occupied[zs, rows, cols] |= r < 1.0
        return saved

    def restore(self, saved: tuple | None) -> None:
        if saved is not None:
            zs, rows, cols, before = saved
            self.occupied[zs, rows, cols] = before

    def _box(self, e: _Ellipsoid, grow_mm: float):
        ext = e.half_extent(grow_mm)
        cx, cy, cz = e.centre
        zs = slice(
            max(0, int(math.floor((cz - ext[2]) / self.dz))),
            min(len(self.sweep), int((cz + ext[2]) / self.dz) + 2),
        )
        rows = _span(cy, ext[1], self.s, self.shape[0])
        cols = _span(cx, ext[0], self.s, self.shape[1])
        if zs.start >= zs.stop or rows.start >= rows.stop or cols.start >= cols.stop:
            return None
        dz = (self.sweep[zs] - cz)[:, None, None]
        dy = (self.depth[rows] - cy)[None, :, None]
        dx = (self.lateral[cols] - cx)[None, None, :]
        return zs, rows, cols, e.radius(dx, dy, dz, grow_mm)

    def fits_vessel(self, tube: _VesselTube, top: str, bottom: str) -> bool:
        """Every section in view, inside its layer (0.2 mm; synth.py's vessel rule) and clear of the others."""
        return all(self._blob_fits(tube.blob(z), k, top, bottom, 0.2) for k, z in enumerate(self.sweep))

    def mark_vessel(self, tube: _VesselTube) -> None:
        for k, z in enumerate(self.sweep):
            blob = tube.blob(z)
            rows, cols, r = blob.radius(self.s, self.shape, pad_mm=self.gap_mm + 0.5)
            self.occupied[k, rows, cols] |= r < 1.0 + self.gap_mm / min(blob.a, blob.b)

    def fits_nerve(self, tube: _NerveTube, top: str, bottom: str) -> bool:
        """synth.py's rule for a cross-section nerve (in view, 0.4 mm inside its compartment, clear), at every
        position along the sweep."""
        return all(
            _nerve_fits(tube.nerve(z), self.bounds[top][k], self.bounds[bottom][k], self.occupied[k], self.s)
            for k, z in enumerate(self.sweep)
        )

    def mark_nerve(self, tube: _NerveTube) -> None:
        for k, z in enumerate(self.sweep):
            _mark(self.occupied[k], tube.nerve(z), self.s)

    def _blob_fits(self, blob: _Blob, k: int, top: str, bottom: str, margin_mm: float) -> bool:
        rows, cols, r = blob.radius(self.s, self.shape, pad_mm=0.5)
        inside = r < 1.0
        rr, cc = np.nonzero(inside)
        if rr.size == 0:
            return False
        zmin, zmax = (rows.start + rr.min()) * self.s, (rows.start + rr.max() + 1) * self.s
        xmin, xmax = (cols.start + cc.min()) * self.s, (cols.start + cc.max() + 1) * self.s
        if xmin < 0.3 or xmax > self.shape[1] * self.s - 0.3 or zmax > self.shape[0] * self.s - 0.3:
            return False
        span = slice(cols.start + cc.min(), cols.start + cc.max() + 1)
        if (
            zmin < self.bounds[top][k, span].max() + margin_mm
            or zmax > self.bounds[bottom][k, span].min() - margin_mm
        ):
            return False
        return not (self.occupied[k, rows, cols] & inside).any()

    def random_between(self, rng: np.random.Generator, top: str, bottom: str) -> tuple[float, float, float]:
        """A random (lateral, depth, sweep) point between two boundaries, anywhere in the frame and sweep."""
        col = int(rng.integers(self.shape[1]))
        k = int(rng.integers(len(self.sweep)))
        low, high = float(self.bounds[top][k, col]), float(self.bounds[bottom][k, col])
        return float(self.lateral[col]), float(rng.uniform(low, max(low, high))), float(self.sweep[k])


def _draw_scene(
    rng: np.random.Generator,
    subj: Subject,
    yaw: float,
    shape: tuple[int, int],
    length_mm: float,
    slice_mm: float,
) -> _Scene:
    """Everything in one sweep, placed on the nominal grid: bands and TrPs first, then vessels, look-alikes,
    nerves (each at least the grid's gap from the others)."""
    s = subj.spacing_mm
    width_mm = shape[1] * s
    layers = _draw_layers(rng, subj, width_mm, length_mm)
    grid = _Grid(layers, s, shape, length_mm, slice_mm)
    theta = subj.fibre_angle_rad
    fibre = _unit(np.array([math.cos(theta), math.sin(theta), math.tan(yaw)]))

    bands, trps = _draw_bands(rng, grid, fibre, theta, yaw)
    vessels = _draw_vessels(rng, grid)
    lookalikes = _draw_lookalikes(rng, grid)
    nerves, companions = _draw_nerve_tubes(rng, grid, subj, vessels)
    septa_angle = float(rng.uniform(-0.15, 0.15))
    swe = _draw_swe_box(rng, shape, s, length_mm, trps)
    return _Scene(layers, bands, trps, lookalikes, (*vessels, *companions), nerves, swe, septa_angle)


def _draw_bands(rng: np.random.Generator, grid: _Grid, fibre: np.ndarray, theta: float, yaw: float):
    bands: list[_Band] = []
    trps: list[_Ellipsoid] = []
    for _ in range(_draw_count(rng, BAND_COUNTS)):
        n_trp = 1 + _draw_count(rng, TRPS_PER_BAND)
        label = ACTIVE_TRP if rng.random() < 0.5 else LATENT_TRP  # shared along a band (as synth.py's rows)
        band_axes = _frame_along(fibre)
        half_depth, half_width = _uniform(rng, BAND_HALF_DEPTH_MM), _uniform(rng, BAND_HALF_WIDTH_MM)
        band_ratio, band_echo = _uniform(rng, BAND_STIFFNESS_RATIO), _uniform(rng, BAND_ECHO_DB)
        # Sizes drawn once per row, positions retried: a retry that redrew the sizes would favour small nodules
        # (the big ones fail more often) and bend the literature's 16 +/- 11 mm^2.
        row = [_draw_trp(rng, theta, yaw, label, len(bands)) for _ in range(n_trp)]
        gaps = [_uniform(rng, TRP_GAP_MM) for _ in range(n_trp - 1)]
        placed: list[_Ellipsoid] = []
        while row and not placed:
            for _try in range(20):
                centre = np.asarray(grid.random_between(rng, "trap_top", "trap_bottom"))
                direction = float(rng.choice([-1.0, 1.0]))
                chain = [replace(row[0], centre=tuple(float(v) for v in centre))]
                for trp, gap in zip(row[1:], gaps, strict=False):
                    step = chain[-1].semi[0] + trp.semi[0] + gap
                    centre = np.asarray(chain[-1].centre) + direction * step * fibre
                    chain.append(replace(trp, centre=tuple(float(v) for v in centre)))
                undo = []
                for trp in chain:
                    if not grid.fits_ellipsoid(trp, "trap_top", "trap_bottom"):
                        break
                    undo.append(grid.mark_ellipsoid(trp))
                else:
                    placed = chain
                    break
                for saved in reversed(undo):
                    grid.restore(saved)
            else:
                row = row[:-1]  # the visible muscle is too small or crowded for this many: a shorter row
        if placed:
            bands.append(_Band(tuple(float(v) for v in placed[0].centre), band_axes, half_depth, half_width,
                               band_ratio, band_echo))  # fmt: skip
            trps.extend(placed)
    return tuple(bands), tuple(trps)


def _draw_trp(rng: np.random.Generator, theta: float, yaw: float, label: int, band: int) -> _Ellipsoid:
    """A trigger point at the origin (the caller places it)."""
    # In-plane area 16 +/- 11 mm^2, the same for active and latent (Sikdar 2009), aspect 2-3 along the fibres
    # (+/-4 deg), as synth.py; the third semi-axis across the sweep: TRP_WIDTH_RATIO (see there).
    area = float(np.clip(rng.normal(16.0, 11.0), 4.0, 45.0))
    aspect = float(rng.uniform(2.0, 3.0))
    a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
    c = float(np.clip(b * _uniform(rng, TRP_WIDTH_RATIO), TRP_MIN_HALF_WIDTH_MM, a))
    angle = theta + float(rng.normal(0.0, math.radians(4.0)))
    axes = _frame_along(np.array([math.cos(angle), math.sin(angle), math.tan(yaw)]))
    wobble = tuple((float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0, 2 * math.pi))) for _ in range(2))
    contrast = _uniform(rng, appearance_ranges("literature").trp_contrast_db)
    ratio = float(rng.uniform(1.0, 2.0))  # TrP / muscle stiffness (Chen 2016 ~2x; Valera-Calero 2021: none)
    return _Ellipsoid(TRP, (0.0, 0.0, 0.0), axes, (a, b, c), wobble, label, contrast, ratio, band)


def _draw_vessels(rng: np.random.Generator, grid: _Grid) -> list[_VesselTube]:
    vessels: list[_VesselTube] = []
    for _ in range(_draw_count(rng, _LITERATURE_COUNTS["vessel"])):
        for _try in range(12):
            in_fat = rng.random() < 0.5  # synth.py: half in the fat, half in or below the muscle
            top, bottom = ("skin_bottom", "fascia_top") if in_fat else ("trap_top", "bone_top")
            radius = rng.uniform(0.6, 1.2) if in_fat else rng.uniform(0.9, 2.0)
            x, y, _ = grid.random_between(rng, top, bottom)
            path = _draw_path(rng, x, y, grid.length_mm / 2)
            tube = _VesselTube(
                path, radius * float(rng.uniform(1.0, 1.4)), radius, float(rng.uniform(-0.2, 0.2))
            )
            if grid.fits_vessel(tube, top, bottom):
                grid.mark_vessel(tube)
                vessels.append(tube)
                break
    return vessels


def _draw_lookalikes(rng: np.random.Generator, grid: _Grid) -> list[_Ellipsoid]:
    """synth.py's background confounders as ellipsoids of any orientation: stiff bright fibrotic patches and
    soft dark round or irregular regions (not fibre-aligned, so not trigger points)."""
    ranges = appearance_ranges("literature")
    found: list[_Ellipsoid] = []
    for kind, counts in (
        (FIBROTIC, _LITERATURE_COUNTS["fibrotic"]),
        (SOFT_HYPOECHOIC, _LITERATURE_COUNTS["soft"]),
    ):
        for _ in range(_draw_count(rng, counts)):
            for _try in range(10):
                if kind == FIBROTIC:
                    area, aspect, amp = rng.uniform(3.0, 20.0), rng.uniform(1.0, 2.0), 0.2
                    top, bottom = "fascia_top", "trap_bottom"
                    contrast, ratio = _uniform(rng, ranges.fibrotic_contrast_db), rng.uniform(1.5, 2.5)
                else:
                    area = float(np.clip(rng.normal(16.0, 9.0), 4.0, 40.0))
                    irregular = rng.random() < 0.5
                    aspect = rng.uniform(1.0, 1.6) if irregular else rng.uniform(1.0, 1.3)
                    amp = 0.25 if irregular else 0.04
                    top, bottom = (
                        ("skin_bottom", "fascia_top") if rng.random() < 0.25 else ("trap_top", "trap_bottom")
                    )
                    contrast, ratio = -_uniform(rng, ranges.soft_contrast_db), rng.uniform(0.6, 1.0)
                a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
                c = math.sqrt(a * b) * float(rng.uniform(0.8, 1.25))  # roundish in 3-D too
                centre = grid.random_between(rng, top, bottom)
                wobble = tuple(
                    (float(rng.uniform(-amp, amp)), float(rng.uniform(0, 2 * np.pi))) for _ in range(3)
                )
                blob = _Ellipsoid(
                    kind, centre, _random_rotation(rng), (a, b, c), wobble, 0, contrast, float(ratio)
                )
                margin = -0.1 if kind == FIBROTIC else 0.4  # fibrosis may reach into the fascia (synth.py)
                if grid.fits_ellipsoid(blob, top, bottom, margin):
                    grid.mark_ellipsoid(blob)
                    found.append(blob)
                    break
    return found


def _draw_nerve_tubes(
    rng: np.random.Generator, grid: _Grid, subj: Subject, vessels: list[_VesselTube]
) -> tuple[list[_NerveTube], list[_VesselTube]]:
    """synth.py's cross-section nerves as tubes: in the trapezius, on the deep fascia or in the deep muscle; 75 %
    beside a vessel (the pair shares one path), that vessel drawn with it when the sweep has none in the muscle."""
    ranges = appearance_ranges("literature")
    compartments = {"trapezius": ("trap_top", "trap_bottom"), "between": ("trap_top", "bone_top"),
                    "deep": ("deep_top", "bone_top")}  # fmt: skip
    muscle_vessels = [v for v in vessels if v.path.depth_mm > float(np.median(grid.bounds["trap_top"]))]
    nerves: list[_NerveTube] = []
    companions: list[_VesselTube] = []
    for _ in range(_draw_count(rng, _LITERATURE_COUNTS["nerve"])):
        bundle = rng.random() < ranges.nerve_beside_vessel
        diameter = _uniform(rng, ranges.nerve_diameter_mm)
        flattening = _uniform(rng, NERVE_FLATTENING)
        a, b = diameter / 2 * math.sqrt(flattening), diameter / 2 / math.sqrt(flattening)
        rim_mm = min(_uniform(rng, NERVE_EPINEURIUM_MM), 0.2 * diameter)
        fascicle_mm, septum_mm = _uniform(rng, NERVE_FASCICLE_MM), _uniform(rng, NERVE_SEPTUM_MM)
        rim_db = _uniform(rng, ranges.nerve_epineurium_db)
        fascicle_db = subj.muscle_db - _uniform(rng, ranges.nerve_fascicle_contrast_db)
        ratio = _uniform(rng, NERVE_STIFFNESS_RATIO)
        theta = math.radians(rng.uniform(-5.0, 5.0))
        section = _Nerve(0.0, 0.0, a, b, theta, False, rim_mm, np.zeros((0, 3), np.float32), rim_db, fascicle_db,
                         ratio, bundle)  # fmt: skip
        section.fascicles = _fascicles(rng, section, fascicle_mm, septum_mm)
        for _try in range(25):
            where = str(rng.choice(list(compartments), p=[0.4, 0.4, 0.2]))
            top, bottom = compartments[where]
            partner = None
            phi = float(rng.choice([0.0, math.pi]) + rng.uniform(-0.7, 0.7))
            if bundle and muscle_vessels:  # beside a vessel of the sweep: its path, shifted
                vessel = muscle_vessels[int(rng.integers(len(muscle_vessels)))]
                reach = (
                    max(vessel.a, vessel.b)
                    + _uniform(rng, NERVE_GAP_TO_VESSEL_MM)
                    + section.extent_towards(phi)
                )
                path = vessel.path.shifted(reach * math.cos(phi), reach * math.sin(phi))
                top, bottom = compartments["between"]
            else:
                x, y, _ = grid.random_between(rng, top, bottom)
                if where == "between":  # centred on the deep fascia
                    col = min(grid.shape[1] - 1, int(x / grid.s))
                    k = len(grid.sweep) // 2
                    y = float(grid.bounds["trap_bottom"][k, col] + grid.bounds["deep_top"][k, col]) / 2
                path = _draw_path(rng, x, y, grid.length_mm / 2, slope=0.5)
            tube = _NerveTube(path, section)
            if not grid.fits_nerve(tube, top, bottom):
                continue
            if bundle and not muscle_vessels:
                radius = rng.uniform(0.9, 2.0)
                va, vb = radius * float(rng.uniform(1.0, 1.4)), radius
                reach = section.extent_towards(phi) + _uniform(rng, NERVE_GAP_TO_VESSEL_MM) + max(va, vb)
                vessel_path = path.shifted(reach * math.cos(phi), reach * math.sin(phi))
                partner = _VesselTube(
                    vessel_path, va, vb, float(rng.uniform(-0.2, 0.2)), bundle_companion=True
                )
                if not grid.fits_vessel(partner, "trap_top", "bone_top"):
                    continue
            grid.mark_nerve(tube)
            if partner is not None:
                grid.mark_vessel(partner)
                companions.append(partner)
            nerves.append(tube)
            break
    return nerves, companions


def _draw_swe_box(
    rng: np.random.Generator, shape: tuple[int, int], s: float, length_mm: float, trps: tuple[_Ellipsoid, ...]
) -> _SweBox:
    """One box for the whole sweep (the operator keeps it while moving the probe), 15-25 mm, on a nodule in 70 %
    of sweeps that have one (synth.py's literature rules); 3-D "black hole" voids inside it."""
    ranges = appearance_ranges("literature")
    width_mm, depth_mm = shape[1] * s, shape[0] * s
    box_w = min(_uniform(rng, ranges.swe_box_width_mm), 0.9 * width_mm)
    box_h = min(_uniform(rng, ranges.swe_box_height_mm), depth_mm - 1.0)
    top_low, top_high = ranges.swe_box_top_mm
    top = float(rng.uniform(top_low, max(top_low + 0.1, min(top_high, depth_mm - box_h))))
    if trps and rng.random() < ranges.swe_on_trp:
        jitter = ranges.swe_on_trp_jitter_mm
        centre = trps[int(rng.integers(len(trps)))].centre[0] + rng.uniform(-jitter, jitter)
    else:
        centre = rng.uniform(box_w / 2, width_mm - box_w / 2)
    left = float(np.clip(centre - box_w / 2, 0.0, width_mm - box_w))
    voids = []
    for _block in range(max(1, math.ceil(length_mm / 10.0))):
        for _ in range(_draw_count(rng, SWE_VOID_COUNTS)):
            centre_xyz = (
                rng.uniform(left, left + box_w),
                rng.uniform(top, top + box_h),
                rng.uniform(0, length_mm),
            )
            voids.append(tuple(float(v) for v in (*centre_xyz, *rng.uniform(0.8, 2.5, 3))))
    return _SweBox(left, top, box_w, box_h, _uniform(rng, ranges.swe_fwhm_mm), tuple(voids))


# -------------------------------------------------------------------------------------------- a slice
class _Textures:
    """The random fields of one slice, each continuing from the previous slice: the tissue textures with an
    exponential correlation over TEXTURE_CORRELATION_MM, the complex scatterers with ``speckle_correlation``."""

    def __init__(self, rng: np.random.Generator, subj: Subject, shape: tuple[int, int], septa_angle: float,
                 elevation_fwhm_mm: float):  # fmt: skip
        s, angle = subj.spacing_mm, subj.fibre_angle_rad
        self.rng, self.shape, self.elevation_fwhm_mm = rng, shape, elevation_fwhm_mm
        # synth.py's texture recipes (generate_frame), one fresh draw each per slice
        self.makers = {
            "fibres": lambda: _streaks(rng, shape, angle, length_px=6.0 / s, width_px=0.7),
            "deep_fibres": lambda: _streaks(rng, shape, -0.5 * angle, length_px=3.0 / s, width_px=0.7),
            "septa": lambda: _streaks(rng, shape, septa_angle, length_px=2.5 / s, width_px=0.8),
            "fascia": lambda: _streaks(rng, shape, 0.0, length_px=1.5 / s, width_px=1.0),
            "heterogeneity": lambda: _smooth_noise(rng, shape, 0.35 / s),
            "stiffness": lambda: _smooth_noise(rng, shape, 3.0 / s),
        }
        self.fields: dict[str, np.ndarray] = {}

    def advance(self, gap_mm: float) -> dict[str, np.ndarray]:
        """The next slice's fields, ``gap_mm`` from the previous one (math.inf for the first)."""
        for name, make in self.makers.items():
            rho = math.exp(-gap_mm / TEXTURE_CORRELATION_MM[name]) if math.isfinite(gap_mm) else 0.0
            self.fields[name] = _continue(self.fields.get(name), make(), rho)
        fresh = self.rng.standard_normal((*self.shape, 2), dtype=np.float32)
        rho = speckle_correlation(gap_mm, self.elevation_fwhm_mm) if math.isfinite(gap_mm) else 0.0
        self.fields["scatterers"] = _continue(self.fields.get("scatterers"), fresh, rho)
        return self.fields


def _render_slice(
    scene: _Scene, subj: Subject, sweep_mm: float, tex: dict[str, np.ndarray], shape: tuple[int, int],
    stiffness_factor: float, echo_db: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """Echo (dB), Young's modulus (kPa), labels and tissue codes of the slice at ``sweep_mm``: synth.py's layer
    and object painting, with the objects' sections at this position."""
    s = subj.spacing_mm
    depth = ((np.arange(shape[0], dtype=np.float32) + 0.5) * s)[:, None]
    lateral = ((np.arange(shape[1], dtype=np.float32) + 0.5) * s)[None, :]
    b = scene.layers.boundaries(lateral[0], sweep_mm)
    gel = scene.layers.gel_mm
    tissue = np.full(shape, NEAR_FIELD, np.uint8)
    zz = np.broadcast_to(depth, shape)
    for boundary, code in [
        (gel, SKIN), (b["skin_bottom"], FAT), (b["fascia_top"], FASCIA), (b["trap_top"], MUSCLE),
        (b["trap_bottom"], FASCIA), (b["deep_top"], DEEP_MUSCLE), (b["bone_top"], BONE), (b["bone_bottom"], SHADOW),
    ]:  # fmt: skip
        tissue[zz >= boundary] = code

    septa, fibres = tex["septa"], tex["fibres"]
    striation = np.clip(fibres - 0.3, 0.0, None) * 9.0  # bright perimysium lines on dark fascicles
    fascia_db = -21.0 + 3.0 * tex["fascia"]
    edge_mm = np.minimum(np.abs(zz - b["fascia_top"]), np.abs(zz - b["trap_top"]))
    edge_mm = np.minimum(edge_mm, np.minimum(np.abs(zz - b["trap_bottom"]), np.abs(zz - b["deep_top"])))
    fascia_db = np.maximum(fascia_db, -9.0 - 80.0 * edge_mm**2 + 2.5 * septa)
    db = np.select(
        [tissue == NEAR_FIELD, tissue == SKIN, tissue == FAT, tissue == FASCIA, tissue == MUSCLE],
        [-55.0, -14.0 + 2.0 * septa, subj.fat_db + np.clip(septa - 0.9, 0.0, None) * 14.0, fascia_db,
         subj.muscle_db + striation],
        default=subj.muscle_db - 1.0 + np.clip(tex["deep_fibres"] - 0.3, 0.0, None) * 8.0,
    ).astype(np.float32)  # fmt: skip
    db = np.maximum(db, -3.0 - 40.0 * (depth - gel) ** 2)  # entry echo at the skin surface
    bone = tissue == BONE
    db[bone] = (-2.0 + 2.0 * septa)[bone]
    shadow = tissue == SHADOW
    below = np.clip(depth - b["bone_bottom"], 0.0, None)
    db[shadow] = np.broadcast_to(-52.0 + 6.0 * np.exp(-below / 1.5), shape)[shadow]

    kpa = np.select(
        [tissue == SKIN, tissue == FAT, tissue == FASCIA, tissue == MUSCLE],
        [40.0, subj.fat_kpa, 1.6 * subj.muscle_kpa, subj.muscle_kpa],
        default=subj.deep_kpa_ratio * subj.muscle_kpa,
    ).astype(np.float32)
    kpa *= 1.0 + 0.06 * tex["stiffness"]  # smooth regional variation
    plain_kpa = kpa.copy()  # before the bands: TrPs' stiffness is relative to the muscle, as in synth.py

    muscle = tissue == MUSCLE
    for band in scene.bands:
        w = band.weight(lateral, depth, sweep_mm) * muscle
        db -= band.echo_db * w
        kpa *= 1.0 + (band.ratio - 1.0) * w

    mask = np.zeros(shape, np.uint8)
    for trp in scene.trps:
        found = trp.in_slice(sweep_mm, s, shape)
        if found is None:
            continue
        rows, cols, r = found
        contrast, ratio = trp.contrast_db, trp.ratio
        if trp.label == ACTIVE_TRP:  # the active/latent difference: deterministic, no draw of its own
            contrast, ratio = contrast + echo_db, ratio * stiffness_factor
        w = _soft(r, edge=0.35)
        # Darker, fibrillar pattern lost, heterogeneous interior (Sikdar 2009).
        inner = (
            subj.muscle_db - contrast + 2.5 * tex["heterogeneity"][rows, cols] + 0.1 * striation[rows, cols]
        )
        db[rows, cols] = (1 - w) * db[rows, cols] + w * inner
        kpa[rows, cols] = (1 - w) * kpa[rows, cols] + w * plain_kpa[rows, cols] * ratio
        mask[rows, cols][r < 1.0] = trp.label
        tissue[rows, cols][r < 1.0] = TRP
    for blob in scene.lookalikes:
        found = blob.in_slice(sweep_mm, s, shape)
        if found is None:
            continue
        rows, cols, r = found
        w = _soft(r, edge=0.3)
        if blob.kind == FIBROTIC:
            db[rows, cols] += blob.contrast_db * w
        else:  # homogeneous: a flat darker level replaces the texture, fibres faintly kept
            flat = np.where(tissue[rows, cols] == FAT, subj.fat_db, subj.muscle_db) + blob.contrast_db
            db[rows, cols] = (1 - w) * db[rows, cols] + w * (flat + 0.5 * striation[rows, cols])
        kpa[rows, cols] *= 1.0 + (blob.ratio - 1.0) * w
        tissue[rows, cols][r < 1.0] = blob.kind
    for tube in scene.nerves:
        _paint_nerve(tube.nerve(sweep_mm), db, kpa, mask, tissue, subj, s)
    for tube in scene.vessels:
        _paint_vessel(tube.blob(sweep_mm), db, mask, tissue, depth, lateral, s)
    return db, kpa, mask, tissue


def _bmode_from_scatterers(
    scatterers: np.ndarray, db: np.ndarray, depth: np.ndarray, subj: Subject
) -> np.ndarray:
    """synth.py's literature B-mode formation (``_form_bmode``) with the complex scatterer field given (it
    continues from the previous slice): echo x scatterers -> baseband PSF -> envelope -> residual attenuation
    after partial TGC -> log compression -> display blur -> uint8."""
    s = subj.spacing_mm
    field = scatterers * np.power(10.0, db / 20.0).astype(np.float32)[..., None]
    wavelength = SPEED_OF_SOUND_MM_PER_US / subj.f0_mhz
    axial_sigma = subj.cycles * wavelength / 2 / 2.355 / s
    lateral_sigma = subj.lateral_fwhm_mm / 2.355 / s
    field = cv2.sepFilter2D(
        field, -1, _gauss(lateral_sigma), _gauss(axial_sigma), borderType=cv2.BORDER_REFLECT
    )
    envelope = np.sqrt(field[..., 0] ** 2 + field[..., 1] ** 2 + 1e-12)
    residual_db = -2.0 * subj.alpha_db_cm_mhz * subj.f0_mhz * (depth / 10.0) * (1.0 - subj.tgc_fraction)
    log_db = 20.0 * np.log10(envelope) + residual_db + subj.gain_db
    grey = np.clip((log_db + subj.dynamic_range_db) / subj.dynamic_range_db, 0.0, 1.0)
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), subj.display_blur_px)
    return (grey * 255.0 + 0.5).astype(np.uint8)


def _swe_slice(
    rng: np.random.Generator,
    kpa: np.ndarray,
    tissue: np.ndarray,
    sweep_mm: float,
    subj: Subject,
    box: _SweBox,
) -> np.ndarray:
    """synth.py's SWE formation for one slice, in the sweep's fixed box: blur to the SWE resolution,
    depth-growing multiplicative noise (fresh per slice: each is its own acquisition) and bias, NaN outside the
    box, in fluid, at and below bone and in the sweep's voids."""
    s = subj.spacing_mm
    h, w = kpa.shape
    depth = ((np.arange(h, dtype=np.float32) + 0.5) * s)[:, None]
    lateral = ((np.arange(w, dtype=np.float32) + 0.5) * s)[None, :]
    kpa = cv2.GaussianBlur(kpa, (0, 0), sigmaX=box.fwhm_mm / 2.355 / s)
    noise_sd = subj.swe_noise_sd + subj.swe_noise_sd_per_30mm * (depth / 30.0)
    kpa = (kpa * np.exp(noise_sd * _smooth_noise(rng, kpa.shape, 0.6 / s)) * (1.0 - 0.004 * depth)).astype(
        np.float32
    )
    valid = (
        (depth >= box.top_mm) & (depth < box.top_mm + box.height_mm)
        & (lateral >= box.left_mm) & (lateral < box.left_mm + box.width_mm)
    )  # fmt: skip
    no_signal = np.isin(tissue, (VESSEL_TISSUE, BONE, SHADOW)).astype(np.uint8)
    no_signal = cv2.dilate(no_signal, np.ones((3, 3), np.uint8), iterations=max(1, int(0.3 / s))) > 0
    for cx, cy, cz, ax, ay, az in box.voids:
        t = 1.0 - ((sweep_mm - cz) / az) ** 2
        if t > 0.0:  # the void's section here
            no_signal |= ((lateral - cx) / ax) ** 2 + ((depth - cy) / ay) ** 2 < t
    return np.where(valid & ~no_signal, kpa, np.nan).astype(np.float32)


# ------------------------------------------------------------------------------------------ the sweep
def check_sweep_arguments(
    slices: int, height: int, width: int, spacing_mm: float, slice_spacing_mm: float, jitter_mm: float,
    drop_p: float, seed: int = 0,
) -> None:  # fmt: skip
    """ValueError for settings the generator cannot honour (checked before anything is drawn or written)."""
    if slices < 2:
        raise ValueError(f"a sweep needs at least 2 slices (got {slices})")
    if height < 32 or width < 32:
        raise ValueError(f"frames must be at least 32x32 pixels (got {height}x{width})")
    if not (math.isfinite(spacing_mm) and 0.02 <= spacing_mm <= 1.0):
        raise ValueError(f"spacing_mm must be 0.02-1.0 mm (got {spacing_mm!r})")
    if not (math.isfinite(slice_spacing_mm) and 0.05 <= slice_spacing_mm <= 10.0):
        raise ValueError(f"slice_spacing_mm must be 0.05-10 mm (got {slice_spacing_mm!r})")
    if not (math.isfinite(jitter_mm) and jitter_mm >= 0.0):
        raise ValueError(f"jitter_mm must be a non-negative number of mm (got {jitter_mm!r})")
    if not (math.isfinite(drop_p) and 0.0 <= drop_p <= 0.9):
        raise ValueError(f"drop_p must be a probability in [0, 0.9] (got {drop_p!r})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative (got {seed})")


def generate_sweep(
    seed: int,
    subject: int,
    sweep: int = 0,
    *,
    slices: int = DEFAULT_SLICES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    spacing_mm: float = DEFAULT_SPACING_MM,
    slice_spacing_mm: float = DEFAULT_SLICE_SPACING_MM,
    jitter_mm: float = 0.0,
    drop_p: float = 0.0,
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> dict:
    """One synthetic sweep of ``slices`` frames of ``height`` x ``width`` pixels, nominally ``slice_spacing_mm``
    apart (the true positions differ with ``jitter_mm`` / ``drop_p``).

    Returns ``{"bmode": uint8 (Z, H, W), "elasto": float32 kPa (Z, H, W), NaN = no signal, "mask": uint8 (Z, H, W)
    labels (DEFAULT_CLASSES), "tissue": uint8 (Z, H, W) synth.py tissue codes, "spacing_mm", "slice_spacing_mm",
    "sweep_mm": float64 (Z,) true slice positions, "boundaries_mm": {name: float32 (Z, W) depth}, "objects": list of
    dicts (trigger points, look-alikes, vessels, nerves), "fibre_angle_deg", "fibre_yaw_deg",
    "elevation_fwhm_mm"}``. ``active_stiffness_factor`` / ``active_echo_db``: the active/latent difference, as
    ``tpnet.data.synth.generate_frame`` (defaults: none)."""
    check_sweep_arguments(slices, height, width, spacing_mm, slice_spacing_mm, jitter_mm, drop_p, seed)
    stiffness_factor, echo_db = check_active_latent_effect(active_stiffness_factor, active_echo_db)
    subj, elevation_fwhm, yaw = _subject(seed, subject, float(spacing_mm))
    shape = (height, width)
    length_mm = (slices - 1) * slice_spacing_mm
    scene = _draw_scene(_rng(seed, STREAM, 2, subject, sweep), subj, yaw, shape, length_mm, slice_spacing_mm)
    positions = sweep_positions_mm(
        _rng(seed, STREAM, 4, subject, sweep), slices, slice_spacing_mm, jitter_mm, drop_p
    )
    rng = _rng(seed, STREAM, 3, subject, sweep)
    textures = _Textures(rng, subj, shape, scene.septa_angle_rad, elevation_fwhm)
    depth = ((np.arange(height, dtype=np.float32) + 0.5) * spacing_mm)[:, None]
    lateral = (np.arange(width, dtype=np.float32) + 0.5) * spacing_mm

    bmode = np.empty((slices, *shape), np.uint8)
    elasto = np.empty((slices, *shape), np.float32)
    mask = np.empty((slices, *shape), np.uint8)
    tissue = np.empty((slices, *shape), np.uint8)
    previous = None
    for k, position in enumerate(positions):
        gap = math.inf if previous is None else abs(float(position) - previous)
        tex = textures.advance(gap)
        db, kpa, mask[k], tissue[k] = _render_slice(
            scene, subj, float(position), tex, shape, stiffness_factor, echo_db
        )
        bmode[k] = _bmode_from_scatterers(tex["scatterers"], db, depth, subj)
        elasto[k] = _swe_slice(rng, kpa, tissue[k], float(position), subj, scene.swe)
        previous = float(position)
    boundaries = scene.layers.boundaries(lateral[None, :], positions[:, None])
    objects = [t.describe() for t in (*scene.trps, *scene.lookalikes)]
    objects += [v.describe() for v in scene.vessels] + [n.describe() for n in scene.nerves]
    return {
        "bmode": bmode,
        "elasto": elasto,
        "mask": mask,
        "tissue": tissue,
        "spacing_mm": float(spacing_mm),
        "slice_spacing_mm": float(slice_spacing_mm),
        "sweep_mm": positions,
        "boundaries_mm": boundaries,
        "objects": objects,
        "fibre_angle_deg": math.degrees(subj.fibre_angle_rad),
        "fibre_yaw_deg": math.degrees(yaw),
        "elevation_fwhm_mm": elevation_fwhm,
    }


# ------------------------------------------------------------------------------------------ writing
def _write_nifti(path: Path, volume: np.ndarray, spacing_mm: float, slice_spacing_mm: float) -> None:
    """NIfTI stores (x, y, z) = (columns, rows, slices); pixdim in mm from the affine's diagonal."""
    import nibabel as nib

    image = nib.Nifti1Image(
        volume.transpose(2, 1, 0), np.diag([spacing_mm, spacing_mm, slice_spacing_mm, 1.0])
    )
    image.header.set_xyzt_units("mm")
    nib.save(image, path)


def _write_nrrd(path: Path, volume: np.ndarray, spacing_mm: float, slice_spacing_mm: float) -> None:
    """C order: the array's last axis (columns) is the file's first; space directions in mm per axis."""
    import nrrd

    header = {
        "space dimension": 3,
        "space directions": np.diag([spacing_mm, spacing_mm, slice_spacing_mm]),
        "space units": ["mm", "mm", "mm"],
        "encoding": "gzip",
    }
    nrrd.write(str(path), volume, header, index_order="C")


def _write_dicom(
    path: Path, bmode: np.ndarray, spacing_mm: float, slice_spacing_mm: float, sample_id: str, subject_id: str,
    seed: int,
) -> None:  # fmt: skip
    """A multi-frame ultrasound DICOM of the B-mode sweep: pixel size in SequenceOfUltrasoundRegions (cm, as
    scanners write it), SpacingBetweenSlices for the sweep. UIDs derive from the seed and sample, so the file is
    the same on every run."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage, generate_uid

    frames, rows, columns = bmode.shape

    def uid(part: str) -> str:
        return generate_uid(entropy_srcs=[GENERATOR_NAME, str(seed), sample_id, part])

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = uid("instance")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid(f"study {subject_id}"), uid("series")
    ds.Modality = "US"
    ds.Manufacturer = "tpnet synthetic (tpnet.data.synth_sweeps)"
    ds.PatientName, ds.PatientID = f"SYNTHETIC^{subject_id}", subject_id
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = "NO"
    region = Dataset()
    region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0  # 2-D tissue image
    region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
    region.RegionLocationMaxX1, region.RegionLocationMaxY1 = columns - 1, rows - 1  # inclusive
    region.PhysicalUnitsXDirection = region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = region.PhysicalDeltaY = spacing_mm / 10.0
    ds.SequenceOfUltrasoundRegions = Sequence([region])
    ds.SpacingBetweenSlices = f"{slice_spacing_mm:.10g}"
    ds.NumberOfFrames = frames
    ds.FrameTime = f"{1000.0 * slice_spacing_mm / SWEEP_SPEED_MM_PER_S:.10g}"  # ms
    ds.FrameIncrementPointer = 0x00181063  # FrameTime
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(bmode, np.uint8).tobytes()
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)


def write_sweep_files(
    root: Path, sample: dict, sample_id: str, subject_id: str, file_format: str = "npy", seed: int = 0
) -> dict[str, str]:
    """One sweep's files under ``root/sweeps`` and its manifest row. npy: (Z, H, W) B-mode uint8, elasto float32
    kPa with NaN, mask uint8; nifti (.nii.gz) and nrrd: the same arrays with their spacing in the header; dicom:
    a multi-frame B-mode DICOM, elasto and mask as .nii.gz. Also ``<id>_scene.json``: the true slice positions
    and the objects (what the files do not say)."""
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}: use one of {', '.join(FILE_FORMATS)}")
    folder = Path(root) / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    s, dz = sample["spacing_mm"], sample["slice_spacing_mm"]
    suffix = {"npy": ".npy", "nifti": ".nii.gz", "nrrd": ".nrrd", "dicom": ".nii.gz"}[file_format]
    names = {part: f"{sample_id}_{part}{suffix}" for part in ("bmode", "elasto", "mask")}
    if file_format == "dicom":
        names["bmode"] = f"{sample_id}_bmode.dcm"
    for part in ("bmode", "elasto", "mask"):
        path = folder / names[part]
        volume = sample[part]
        if file_format == "npy":
            np.save(path, volume, allow_pickle=False)
        elif file_format == "nrrd":
            _write_nrrd(path, volume, s, dz)
        elif file_format == "dicom" and part == "bmode":
            _write_dicom(path, volume, s, dz, sample_id, subject_id, seed)
        else:
            _write_nifti(path, volume, s, dz)
    scene = {
        "sample_id": sample_id,
        "sweep_mm": [round(float(v), 6) for v in sample["sweep_mm"]],
        "fibre_angle_deg": round(sample["fibre_angle_deg"], 4),
        "fibre_yaw_deg": round(sample["fibre_yaw_deg"], 4),
        "elevation_fwhm_mm": round(sample["elevation_fwhm_mm"], 4),
        "objects": sample["objects"],
    }
    (folder / f"{sample_id}_scene.json").write_text(json.dumps(scene, indent=1) + "\n")
    return {
        "sample_id": sample_id,
        "subject_id": subject_id,
        "kind": "volume",
        "bmode": f"sweeps/{names['bmode']}",
        "elasto": f"sweeps/{names['elasto']}",
        "mask": f"sweeps/{names['mask']}",
        "spacing_mm": f"{s:.6g}",
        "slice_spacing_mm": f"{dz:.6g}",
    }


def _write_subject(job: tuple[Path, int, int, dict]) -> list[dict[str, str]]:
    root, seed, subject, settings = job
    settings = dict(settings)
    sweeps, file_format = settings.pop("sweeps_per_subject"), settings.pop("file_format")
    subject_id = f"s{subject:03d}"
    return [
        write_sweep_files(
            root,
            generate_sweep(seed, subject, sweep, **settings),
            f"{subject_id}_w{sweep:02d}",
            subject_id,
            file_format,
            seed,
        )  # fmt: skip
        for sweep in range(sweeps)
    ]


def write_sweep_dataset(
    root: str | Path,
    subjects: int = DEFAULT_SUBJECTS,
    slices: int = DEFAULT_SLICES,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    spacing_mm: float = DEFAULT_SPACING_MM,
    slice_spacing_mm: float = DEFAULT_SLICE_SPACING_MM,
    seed: int = 0,
    jitter_mm: float = 0.0,
    drop_p: float = 0.0,
    file_format: str = "npy",
    workers: int | None = None,
    *,
    sweeps_per_subject: int = 1,
    active_stiffness_factor: float = DEFAULT_ACTIVE_STIFFNESS_FACTOR,
    active_echo_db: float = DEFAULT_ACTIVE_ECHO_DB,
) -> Path:
    """Write a contract-version-2 dataset of sweeps to ``root``: dataset.yaml (``contract_version: 2``,
    ``synthetic: true``, the classes, kPa, a ``generator`` block with the seed and every parameter),
    manifest.csv (one ``kind: volume`` row per sweep, MANIFEST_COLUMNS) and the files under ``sweeps/``
    (``write_sweep_files``). Subjects are drawn independently per (seed, subject): ``workers`` processes
    (default: one per core, at most one per subject) write the same bytes as one."""
    if subjects < 1 or sweeps_per_subject < 1:
        raise ValueError(
            f"need at least one subject and one sweep per subject (got {subjects}, {sweeps_per_subject})"
        )
    if file_format not in FILE_FORMATS:
        raise ValueError(f"unknown file_format {file_format!r}: use one of {', '.join(FILE_FORMATS)}")
    check_sweep_arguments(slices, height, width, spacing_mm, slice_spacing_mm, jitter_mm, drop_p, seed)
    stiffness_factor, echo_db = check_active_latent_effect(active_stiffness_factor, active_echo_db)
    root = Path(root)
    (root / "sweeps").mkdir(parents=True, exist_ok=True)
    settings = {
        "slices": int(slices), "height": int(height), "width": int(width), "spacing_mm": float(spacing_mm),
        "slice_spacing_mm": float(slice_spacing_mm), "jitter_mm": float(jitter_mm), "drop_p": float(drop_p),
        "active_stiffness_factor": stiffness_factor, "active_echo_db": echo_db,
    }  # fmt: skip
    jobs = [
        (
            root,
            seed,
            subject,
            {**settings, "sweeps_per_subject": sweeps_per_subject, "file_format": file_format},
        )
        for subject in range(subjects)
    ]
    processes = min(workers or os.cpu_count() or 1, subjects)
    if processes > 1:
        with multiprocessing.get_context().Pool(processes) as pool:
            per_subject = pool.map(_write_subject, jobs, chunksize=1)
    else:
        per_subject = [_write_subject(job) for job in jobs]
    generator = {
        "name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": int(seed), "subjects": int(subjects),
        "sweeps_per_subject": int(sweeps_per_subject), **settings, "file_format": file_format,
    }  # fmt: skip
    spec = {
        "name": f"synthetic-trapezius-sweeps-s{seed}",
        "contract_version": 2,
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "synthetic": True,  # no patient behind these sweeps
        "generator": generator,
    }
    return write_contract_files(root, spec, MANIFEST_COLUMNS, per_subject)
