"""Physics-based synthetic upper-trapezius ultrasound: B-mode, shear-wave elastography (kPa) and labels.

A frame is built the way a scanner forms it (docs/synthetic-data.md lists every number and its source):
tissue echogenicity map (dB) -> complex Gaussian scatterers (Rayleigh speckle) -> baseband point-spread
function (axial pulse envelope x lateral Gaussian) -> envelope -> depth attenuation with partial
time-gain compensation -> log compression -> 8 bit. The SWE map is a coarse, noisy Young's-modulus map
inside a box, NaN where the scanner has no signal.

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
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import yaml

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.encoding import shear_speed_to_kpa
from tpnet.core.io import write_png, write_tiff

GENERATOR_VERSION = 1
BACKGROUND, ACTIVE_TRP, LATENT_TRP, VESSEL = 0, 1, 2, 3
SPEED_OF_SOUND_MM_PER_US = 1.54

# Tissue codes of the ``tissue`` map returned by generate_frame (tests and benchmarks use it; not written).
NEAR_FIELD, SKIN, FAT, FASCIA, MUSCLE, DEEP_MUSCLE, BONE, SHADOW = range(8)
TRP, VESSEL_TISSUE, FIBROTIC, SOFT_HYPOECHOIC = range(8, 12)


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


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


@functools.lru_cache(maxsize=16)
def sample_subject(seed: int, subject: int) -> Subject:
    """Draw one subject (cached: every frame of a subject reuses it)."""
    rng = _rng(seed, 1, subject)
    # Shear-wave speed of a normal upper trapezius 3.35 +/- 0.79 m/s (Hao 2023); E = 3 rho c^2.
    speed = float(np.clip(rng.normal(3.35, 0.79), 2.3, 4.6))
    angle = math.radians(rng.uniform(6.0, 18.0)) * rng.choice([-1.0, 1.0])
    undulation = tuple(
        (float(rng.uniform(0.1, 0.6)), float(rng.uniform(15.0, 45.0)), float(rng.uniform(0, 2 * math.pi)))
        for _ in range(6)
    )
    return Subject(
        # 0.08-0.12 mm: the upper half of the 0.06-0.12 mm range, so 256 px reach below the muscle.
        spacing_mm=round(float(rng.uniform(0.08, 0.12)), 5),
        skin_mm=float(rng.uniform(1.2, 2.0)),
        fat_mm=float(rng.uniform(2.0, 6.0)),  # skin + fat = 3-8 mm subcutis (Salavati 2017, facts file)
        fascia_mm=float(rng.uniform(1.1, 1.3)),
        trapezius_mm=float(rng.uniform(11.0, 12.0)),
        deep_muscle_mm=float(rng.uniform(2.5, 7.0)),
        fibre_angle_rad=angle,
        undulation=undulation,
        muscle_db=float(rng.uniform(-35.0, -32.0)),
        fat_db=float(rng.uniform(-41.0, -37.0)),
        gain_db=float(rng.uniform(-2.0, 2.0)),
        f0_mhz=float(rng.uniform(7.0, 12.0)),
        cycles=float(rng.uniform(2.0, 3.0)),
        lateral_fwhm_mm=float(rng.uniform(0.4, 0.6)),
        alpha_db_cm_mhz=float(rng.uniform(0.5, 1.0)),
        tgc_fraction=float(rng.uniform(0.7, 0.9)),
        dynamic_range_db=float(rng.uniform(50.0, 60.0)),
        muscle_kpa=float(shear_speed_to_kpa(speed**2)),
        fat_kpa=float(rng.uniform(8.0, 18.0)),
        deep_kpa_ratio=float(rng.uniform(0.8, 1.2)),
    )


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


# ----------------------------------------------------------------------------------------------- frame
def generate_frame(seed: int, subject: int, frame: int, height: int = 256, width: int = 256) -> dict:
    """One synthetic frame.

    Returns ``{"bmode": uint8 (H, W), "elasto": float32 kPa (H, W) with NaN = no signal, or None,
    "mask": uint8 (H, W) labels, "spacing_mm": float, "tissue": uint8 (H, W) tissue codes,
    "objects": list of dicts (kind, label, cx_mm, cz_mm, area_mm2, contrast_db, stiffness_ratio)}``.
    """
    subj = sample_subject(seed, subject)
    rng = _rng(seed, 2, subject, frame)
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
    for _ in range(_draw_count(rng, [0.45, 0.4, 0.15])):
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
                trps.extend((blob, label, rng.uniform(3.0, 9.0), rng.uniform(1.0, 2.0)) for blob in blobs)
                placed = True
                break
            occupied[:] = snapshot
        if not placed:
            break  # the visible muscle is too small or too crowded for more nodules

    # --- confounders (background): stiff bright fibrotic patches; soft, round or irregular dark regions
    confounders: list[tuple[_Blob, float, float]] = []
    for _ in range(_draw_count(rng, [0.5, 0.35, 0.15])):
        for _try in range(10):
            area = rng.uniform(3.0, 20.0)
            aspect = rng.uniform(1.0, 2.0)
            a, b = math.sqrt(area * aspect / math.pi), math.sqrt(area / (aspect * math.pi))
            theta = rng.uniform(0, np.pi)
            cx, cz = random_in(muscle_layer)
            wobble = tuple((rng.uniform(-0.2, 0.2), rng.uniform(0, 2 * np.pi)) for _ in range(3))
            blob = _Blob(FIBROTIC, cx, cz, a, b, theta, wobble)
            if place(blob, (fascia_top - 0.5, trap_bottom + 0.5)):
                confounders.append((blob, rng.uniform(6.0, 12.0), rng.uniform(1.5, 2.5)))
                break
    for _ in range(_draw_count(rng, [0.4, 0.4, 0.2])):
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
                confounders.append((blob, -rng.uniform(3.0, 9.0), rng.uniform(0.6, 1.0)))
                break

    # --- paint objects into echo, stiffness, labels
    for blob, label, contrast_db, ratio in trps:
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
    for blob in vessels:
        rows, cols, r = blob.radius(s, shape, pad_mm=2.0)
        wall = np.exp(-(((r - 1.0) * min(blob.a, blob.b) / 0.25) ** 2))
        db[rows, cols] = np.where(r < 0.95, -52.0, np.maximum(db[rows, cols], -10.0 * wall - 60 * (1 - wall)))
        mask[rows, cols][r < 1.0] = VESSEL
        tissue[rows, cols][r < 1.0] = VESSEL_TISSUE
        # Posterior acoustic enhancement: fluid attenuates less than tissue.
        lateral = np.exp(-(((x[0] - blob.cx) / (0.8 * blob.a)) ** 4))[None, :]
        behind = np.clip(z - (blob.cz + blob.b), 0.0, None)
        db += (4.0 * lateral * np.exp(-behind / 6.0) * (z > blob.cz + blob.b)).astype(np.float32)
        objects.append(_describe(blob, VESSEL, -60.0, float("nan")))

    bmode = _form_bmode(rng, db, z, subj)
    elasto = None if rng.random() < 0.15 else _form_swe(rng, kpa, tissue, z, x, subj, trps)
    return {
        "bmode": bmode,
        "elasto": elasto,
        "mask": mask,
        "spacing_mm": s,
        "tissue": tissue,
        "objects": objects,
    }


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


def _form_bmode(rng, db: np.ndarray, z: np.ndarray, subj: Subject) -> np.ndarray:
    s = subj.spacing_mm
    amplitude = np.power(10.0, db / 20.0).astype(np.float32)
    # Fully developed speckle: circular complex Gaussian scatterers -> Rayleigh envelope.
    field = rng.standard_normal((*db.shape, 2), dtype=np.float32) * amplitude[..., None]
    # Baseband PSF: axial envelope of a ``cycles``-cycle pulse (resolution = pulse length / 2), lateral Gaussian.
    wavelength = SPEED_OF_SOUND_MM_PER_US / subj.f0_mhz
    axial_sigma = subj.cycles * wavelength / 2 / 2.355 / s
    lateral_sigma = subj.lateral_fwhm_mm / 2.355 / s
    field = cv2.sepFilter2D(
        field, -1, _gauss(lateral_sigma), _gauss(axial_sigma), borderType=cv2.BORDER_REFLECT
    )
    envelope = np.sqrt(field[..., 0] ** 2 + field[..., 1] ** 2 + 1e-12)
    # Round-trip attenuation exp(-2 alpha f0 z), only partly undone by time-gain compensation.
    residual_db = -2.0 * subj.alpha_db_cm_mhz * subj.f0_mhz * (z / 10.0) * (1.0 - subj.tgc_fraction)
    log_db = 20.0 * np.log10(envelope) + residual_db + subj.gain_db
    grey = np.clip((log_db + subj.dynamic_range_db) / subj.dynamic_range_db, 0.0, 1.0)
    grey = cv2.GaussianBlur(grey.astype(np.float32), (0, 0), 0.6)  # scan conversion / display interpolation
    return (grey * 255.0 + 0.5).astype(np.uint8)


def _gauss(sigma_px: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3 * sigma_px)))
    t = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / max(sigma_px, 1e-3)) ** 2)
    return (k / np.sqrt((k * k).sum())).astype(np.float32)  # unit energy keeps speckle power = echo power


def _form_swe(rng, kpa, tissue, z, x, subj: Subject, trps) -> np.ndarray:
    s = subj.spacing_mm
    h, w = kpa.shape
    width_mm, depth_mm = w * s, h * s
    # Coarse (~1-1.5 mm resolution) and noisier with depth; speed drops slightly with depth (ex vivo).
    fwhm = rng.uniform(1.0, 1.5)
    kpa = cv2.GaussianBlur(kpa, (0, 0), sigmaX=fwhm / 2.355 / s)
    noise_sd = 0.04 + 0.12 * (z / 30.0)
    kpa = kpa * np.exp(noise_sd * _smooth_noise(rng, kpa.shape, 0.6 / s)) * (1.0 - 0.004 * z)
    kpa = kpa.astype(np.float32)

    # SWE box 15-25 mm wide (or the frame), usually centred on a nodule the sonographer is examining.
    box_w = min(rng.uniform(15.0, 25.0), 0.9 * width_mm)
    box_h = min(rng.uniform(15.0, 25.0), depth_mm - 1.0)
    top = rng.uniform(0.8, max(0.9, min(4.0, depth_mm - box_h)))
    if trps and rng.random() < 0.7:
        centre = trps[int(rng.integers(len(trps)))][0].cx + rng.uniform(-3.0, 3.0)
    else:
        centre = rng.uniform(box_w / 2, width_mm - box_w / 2)
    left = float(np.clip(centre - box_w / 2, 0.0, width_mm - box_w))
    valid = (z >= top) & (z < top + box_h) & (x >= left) & (x < left + box_w)

    # No signal: fluid (vessels), behind bone, and random "black hole" voids.
    no_signal = np.isin(tissue, (VESSEL_TISSUE, BONE, SHADOW)).astype(np.uint8)
    no_signal = cv2.dilate(no_signal, np.ones((3, 3), np.uint8), iterations=max(1, int(0.3 / s))) > 0
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


def _write_subject(args: tuple[Path, int, int, int, int, int]) -> list[dict[str, str]]:
    root, seed, subject, frames, height, width = args
    return [
        write_frame_files(
            root,
            generate_frame(seed, subject, frame, height, width),
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
) -> Path:
    """Write a contract dataset (dataset.yaml, manifest.csv, bmode/, elasto/, masks/) to ``out``."""
    check_synth_arguments(out, subjects, frames_per_subject, seed, height, width)
    if appearance != "literature":  # placeholder until the domain-randomised ranges land
        raise ValueError(f"unknown appearance {appearance!r}")
    out = Path(out)
    for sub in ("bmode", "elasto", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    jobs = [(out, seed, subject, frames_per_subject, height, width) for subject in range(subjects)]
    if workers > 1:
        with multiprocessing.get_context().Pool(min(workers, subjects)) as pool:
            per_subject = pool.map(_write_subject, jobs, chunksize=1)
    else:
        per_subject = [_write_subject(job) for job in jobs]
    spec = {
        "name": f"synthetic-trapezius-s{seed}",
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "generator": {"name": "tpnet.data.synth", "version": GENERATOR_VERSION, "seed": seed},
    }
    (out / "dataset.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    with (out / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for rows in per_subject:
            writer.writerows(rows)
    return out


def synthetic_dataset_name(subjects: int, frames_per_subject: int, seed: int, height: int, width: int) -> str:
    return f"synth-v{GENERATOR_VERSION}-seed{seed}-{subjects}x{frames_per_subject}-{height}x{width}"


def ensure_synthetic_dataset(
    cache_dir: Path,
    subjects: int,
    frames_per_subject: int,
    seed: int,
    height: int = 256,
    width: int = 256,
    workers: int = 1,
    appearance: str = "literature",
) -> Path:
    """Generate once into ``cache_dir/<name from the arguments>`` and reuse it afterwards.

    Generation goes to a hidden temp folder renamed at the end, so a killed run never leaves a
    folder that looks complete."""
    cache_dir = Path(cache_dir)
    target = cache_dir / synthetic_dataset_name(subjects, frames_per_subject, seed, height, width)
    if (target / "manifest.csv").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{target.name}.tmp-"))
    try:
        write_synthetic_dataset(tmp, subjects, frames_per_subject, seed, height, width, workers, appearance)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "manifest.csv").is_file():  # not a concurrent winner: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
