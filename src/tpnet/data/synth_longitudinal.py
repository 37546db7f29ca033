"""Synthetic longitudinal studies (issue #18): per subject a baseline visit and follow-ups (1-3 by default), one
B-mode + SWE frame each, with an injection after the baseline scan and every trigger point's known fate.

One 3-D anatomy per subject (tpnet.data.synth_sweeps' scene: layers, fibres, taut bands carrying trigger-point
ellipsoids, look-alikes, vessel and nerve tubes) on a canvas wider and deeper than the frame. Each visit is one
plane of it, seen by a probe placed again with an error: a lateral shift ``dx_mm``, an elevational shift
``dz_mm`` (the plane moves across the image plane), an in-plane tilt ``tilt_deg`` (heel-toe rocking about the
probe face's centre) and its own gain and TGC. The plane is painted by synth_sweeps' ``_render_slice``, its B-mode
formed by ``_bmode_from_scatterers`` and its SWE by ``_swe_slice`` (the same image formation as every tpnet
generator). After the injection each trigger point responds (softer, smaller, resolved, or not at all) and new
ones may appear at later visits. docs/synthetic-data.md, "Longitudinal studies (issue #18)", lists every number
and its source or marks it as an assumption.

Coordinates: a visit frame's (x, y) in mm are lateral from its left edge and depth from the probe face, pixel
(r, c) at ((c + 0.5) s, (r + 0.5) s). The baseline frame is the reference; a visit's point maps to it by
``ProbePlacement.to_baseline_mm``: x_b = W/2 + dx + (x - W/2) cos t - y sin t, y_b = (x - W/2) sin t + y cos t.

Streams: the subject's body and scanner are synth_sweeps' subject of the same (seed, subject); the visits, dates
and probe placements come from (seed, 18, 1, subject); scene attempt k from (seed, 18, 2, subject, k) and its
index nodule, new nodules and responses from (seed, 18, 3, subject, k); the baseline tissue textures from
(seed, 18, 4, subject); a visit's own randomness (texture change across the plane, speckle, SWE box and noise)
from (seed, 18, 5, subject, visit). So subjects are independent and any number of workers writes the same bytes.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import multiprocessing
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from tpnet.core.contract import DEFAULT_CLASSES
from tpnet.core.io import write_png
from tpnet.data.synth import (
    ACTIVE_TRP,
    LATENT_TRP,
    NEAR_FIELD,
    Subject,
    _draw_count,
    appearance_ranges,
    write_contract_files,
    write_frame_files,
)
from tpnet.data.synth_sweeps import (
    SWE_VOID_COUNTS,
    _bmode_from_scatterers,
    _draw_scene,
    _Ellipsoid,
    _render_slice,
    _Scene,
    _subject,
    _swe_slice,
    _SweBox,
    _Textures,
)

GENERATOR_NAME = "tpnet.data.synth_longitudinal"
GENERATOR_VERSION = 1
# First key of every random stream here (the issue's number): not synth.py's (1-5) nor synth_sweeps' (17).
STREAM = 18
MANIFEST_COLUMNS = ("sample_id", "subject_id", "visit", "event", "bmode", "elasto", "mask", "spacing_mm")
TRACK_COLUMNS = (
    "subject_id", "sample_id", "visit", "visit_index", "days_since_baseline", "track_id", "status", "class",
    "x_mm", "y_mm", "x_base_mm", "y_base_mm", "area_mm2", "stiffness_kpa_mean", "stiffness_kpa_max",
    "softening", "shrinkage", "dx_mm", "dz_mm", "tilt_deg", "gain_db",
)  # fmt: skip
NEW, PERSISTING, RESOLVED = "new", "persisting", "resolved"
# The manifest's event on the row of the visit after whose scan the injection was given.
INJECTION = "injection"

# Defaults: small enough to write in seconds on a CPU. 256 px at 0.15 mm = a 38.4 x 38.4 mm frame, the facts
# file's 3-4 cm depth setting and 38-50 mm field width; coarser than a scanner's 0.06-0.09 mm pixels.
DEFAULT_SUBJECTS = 24
DEFAULT_VISITS_MIN, DEFAULT_VISITS_MAX = 2, 4  # baseline + 1-3 follow-ups
MAX_VISITS = 12
DEFAULT_HEIGHT = DEFAULT_WIDTH = 256
DEFAULT_SPACING_MM = 0.15

# --- the study calendar (assumptions: a typical injection follow-up schedule)
BASELINE_DATE = datetime.date(2026, 1, 5)  # the first subject's baseline ...
ENROLMENT_DAYS = 28  # ... the others' within four weeks of it
VISIT_INTERVAL_DAYS = (7, 42)  # days between consecutive visits, uniform integers, inclusive
# The injection, given right after the baseline scan on its date, into every trigger point seen then.
# Assumption: a common trigger-point injection; the response model below does not depend on the dose.
INJECTION_NOTES = "1 ml lidocaine 1 % into each trigger point seen at baseline (assumed dose)"

# --- the probe placed again (assumptions: no source in the facts file measures repositioning error).
# Lateral: the operator finds the nodule again by skin marks and palpation and accepts it anywhere near the image
# centre, so the probe lands a few mm from where it was: N(0, 2 mm) truncated at +/-5 mm (a nodule 5 mm off is
# still well inside a 38-50 mm field).
LATERAL_SD_MM, LATERAL_MAX_MM = 2.0, 5.0
# Elevational: the operator rocks/slides the probe across the band until the nodule's largest, darkest section
# shows, so what is left is a fraction of the 1-2 mm elevational beam width: N(0, 0.5 mm) truncated at +/-1 mm.
ELEVATION_SD_MM, ELEVATION_MAX_MM = 0.5, 1.0
# In-plane tilt (heel-toe rocking about the probe face's centre), the probe held perpendicular to the skin by eye:
# N(0, 1 deg) truncated at +/-3 deg.
TILT_SD_DEG, TILT_MAX_DEG = 1.0, 3.0
# Gain and TGC set again at every follow-up, anywhere in the literature preset's ranges (gain -2..+2 dB, TGC
# undoing 70-90 % of the attenuation); the baseline keeps the subject's. The depth setting (pixel size) is kept.

# --- the response to the injection, per trigger point seen at baseline (docs: "Longitudinal studies")
# Turo et al., J Ultrasound Med 2015: 38 of 48 active MTrPs (79 %) responded to (3 weekly sessions of) dry needling.
RESPONDER_P = 0.79
# A responder's nodule disappears (assumption: Turo 2015 counts "resolved" nodules, no share of them found).
RESOLVE_P = 0.25
# A responder loses this fraction of its excess stiffness over the muscle (it never gets softer than the muscle):
# ratio_after = 1 + (1 - f) (ratio_before - 1). Assumption: Maher et al., Arch Phys Med Rehabil 2013 found the
# MTrPs' SWE shear modulus lower after dry needling (P < .01, 7 women) but no per-nodule distribution to copy.
SOFTENING_FRACTION = (0.2, 0.6)
# ... and shrinks: in-plane area lost g = f x U(0.3, 0.8), every semi-axis x sqrt(1 - g). Coupled to the softening
# because the stiff area and the hypoechoic area of an MTrP go together (r = 0.76, Sikdar 2008); the factor is an
# assumption.
SHRINK_PER_SOFTENING = (0.3, 0.8)
# A responding active TrP is no longer spontaneously painful: latent from its first follow-up (Turo 2015's
# definition of a response). Non-responders and new TrPs do not change. No relapse, no further change after the
# first follow-up (assumption).
NEW_TRP_P = 0.3  # a nodule of the scene other than the index one first appears at a follow-up (assumption)

# --- the scene and which of its nodules are tracked
# The anatomy's extent across the image plane: every nodule fits (at most ~10 mm across).
SCENE_LENGTH_MM = 10.0
SCENE_GRID_MM = 0.5  # synth_sweeps' placement grid across the plane
LATERAL_MARGIN_MM = 8.0  # canvas beyond the baseline frame: 5 mm shift + 2 mm tilt reach + 1 mm
DEPTH_MARGIN_MM = 1.5  # canvas below it: a 3 deg tilt reaches 1 mm deeper at the frame's corners
INDEX_MARGIN_MM = 3.0  # the baseline plane runs through a nodule at least this far inside the frame
SCENE_ATTEMPTS = 20  # scenes tried until one has a tracked nodule at baseline (enrolled patients have one)
# A nodule is kept only if every visit that has it shows a section of at least half its central area, at least
# 0.5 mm inside the frame; the others are taken out of the anatomy (never drawn), so a lost track always means
# "resolved", never "out of view".
MIN_SECTION_FRACTION = 0.5
FRAME_MARGIN_MM = 0.5
SWE_BOX_JITTER_MM = 1.5  # the operator centres the SWE box on the tracked nodules, to about this


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def _truncated_normal(rng: np.random.Generator, sd: float, bound: float) -> float:
    """N(0, sd) redrawn until |value| <= bound."""
    while True:
        value = float(rng.normal(0.0, sd))
        if abs(value) <= bound:
            return value


# ---------------------------------------------------------------------------------------- probe placement
@dataclass(frozen=True)
class ProbePlacement:
    """Where a visit's probe lies relative to the baseline's, and its gain settings. ``dx_mm``: lateral shift
    (+ = towards the baseline frame's higher columns); ``dz_mm``: elevational shift (the image plane moves
    across itself); ``tilt_deg``: in-plane rotation about the probe face's centre (+ = the frame's right end
    deeper in baseline coordinates); ``gain_db``, ``tgc_fraction``: the visit's overall gain and the share of the
    round-trip attenuation its TGC undoes."""

    dx_mm: float
    dz_mm: float
    tilt_deg: float
    gain_db: float
    tgc_fraction: float

    def affine_to_baseline(self, width_mm: float) -> np.ndarray:
        """2 x 3 matrix taking a visit frame's (x, y, 1) in mm to the baseline frame's (x, y)."""
        t = math.radians(self.tilt_deg)
        c, s = math.cos(t), math.sin(t)
        half = width_mm / 2.0
        return np.array([[c, -s, half + self.dx_mm - half * c], [s, c, -half * s]], np.float64)

    def to_baseline_mm(self, x_mm: np.ndarray | float, y_mm: np.ndarray | float, width_mm: float):
        """A visit frame's point(s) in the baseline frame's coordinates (mm)."""
        m = self.affine_to_baseline(width_mm)
        return m[0, 0] * x_mm + m[0, 1] * y_mm + m[0, 2], m[1, 0] * x_mm + m[1, 1] * y_mm + m[1, 2]

    def from_baseline_mm(self, x_mm: np.ndarray | float, y_mm: np.ndarray | float, width_mm: float):
        """The baseline frame's point(s) in this visit frame's coordinates (mm): the inverse rigid map."""
        t = math.radians(self.tilt_deg)
        c, s = math.cos(t), math.sin(t)
        half = width_mm / 2.0
        u = np.asarray(x_mm) - half - self.dx_mm
        v = np.asarray(y_mm)
        return half + c * u + s * v, -s * u + c * v


def _draw_placements(rng: np.random.Generator, visits: int, subj: Subject) -> tuple[ProbePlacement, ...]:
    ranges = appearance_ranges("literature")
    placements = [ProbePlacement(0.0, 0.0, 0.0, subj.gain_db, subj.tgc_fraction)]  # the reference
    for _ in range(1, visits):
        placements.append(
            ProbePlacement(
                dx_mm=_truncated_normal(rng, LATERAL_SD_MM, LATERAL_MAX_MM),
                dz_mm=_truncated_normal(rng, ELEVATION_SD_MM, ELEVATION_MAX_MM),
                tilt_deg=_truncated_normal(rng, TILT_SD_DEG, TILT_MAX_DEG),
                gain_db=float(rng.uniform(*ranges.gain_db)),
                tgc_fraction=float(rng.uniform(*ranges.tgc_fraction)),
            )
        )
    return tuple(placements)


# ------------------------------------------------------------------------------------------------ tracks
@dataclass(frozen=True)
class TrackResponse:
    """One trigger point's course: the visit it first shows (0 = baseline), whether it responds to the
    injection, the fraction of its excess stiffness it loses (``softening``) and of its in-plane area
    (``shrinkage``) from the first follow-up on, and the visit from which it is gone (None = never)."""

    appears_at: int
    responder: bool
    softening: float
    shrinkage: float
    resolves_at: int | None


@dataclass(frozen=True)
class Track:
    """A tracked trigger point: its id (1, 2, ... per subject; the value in the track map), its ellipsoid as
    first seen (canvas mm: lateral, depth, across the plane) and its response."""

    track_id: int
    trp: _Ellipsoid
    response: TrackResponse

    def present(self, visit: int) -> bool:
        resolved = self.response.resolves_at is not None and visit >= self.response.resolves_at
        return visit >= self.response.appears_at and not resolved

    def status(self, visit: int) -> str | None:
        """new (its first visit), persisting, resolved (from the visit it is gone), None before it appears."""
        if visit < self.response.appears_at:
            return None
        if not self.present(visit):
            return RESOLVED
        return NEW if visit == self.response.appears_at else PERSISTING

    def at(self, visit: int) -> _Ellipsoid | None:
        """The nodule as it is at ``visit`` (None when absent): after the injection softer, smaller, and latent
        if it was an active responder."""
        if not self.present(visit):
            return None
        r = self.response
        if visit == 0 or r.appears_at > 0 or not r.responder:
            return self.trp
        scale = math.sqrt(1.0 - r.shrinkage)
        return replace(
            self.trp,
            semi=tuple(float(v) * scale for v in self.trp.semi),
            ratio=1.0 + (1.0 - r.softening) * (self.trp.ratio - 1.0),
            label=LATENT_TRP if self.trp.label == ACTIVE_TRP else self.trp.label,
        )

    def effect(self, visit: int) -> tuple[float, float]:
        """(softening, shrinkage) in effect at ``visit`` (0, 0 before the injection acts)."""
        if self.at(visit) is self.trp:
            return 0.0, 0.0
        return self.response.softening, self.response.shrinkage


def _draw_response(rng: np.random.Generator, visits: int, is_index: bool) -> TrackResponse:
    """The same draws for every nodule (so one nodule's fate never shifts another's)."""
    new = rng.random() < NEW_TRP_P
    appears_at = int(rng.integers(1, visits)) if visits > 1 else 0
    responder = rng.random() < RESPONDER_P
    softening = float(rng.uniform(*SOFTENING_FRACTION))
    shrinkage = softening * float(rng.uniform(*SHRINK_PER_SOFTENING))
    resolves = rng.random() < RESOLVE_P
    resolves_at = int(rng.integers(1, visits)) if visits > 1 else None
    if visits > 1 and new and not is_index:
        return TrackResponse(appears_at, False, 0.0, 0.0, None)  # after the injection: nothing to respond to
    if visits == 1 or not responder:
        return TrackResponse(0, False, 0.0, 0.0, None)
    return TrackResponse(0, True, softening, shrinkage, resolves_at if resolves else None)


# ------------------------------------------------------------------------------------------------ study
@dataclass(frozen=True)
class Study:
    """One subject's study: everything a visit's frame is rendered from, and the truth."""

    seed: int
    subject: int
    subject_id: str
    shape: tuple[int, int]  # (rows, columns) of a visit frame
    spacing_mm: float
    dates: tuple[datetime.date, ...]  # one per visit, the baseline first
    placements: tuple[ProbePlacement, ...]  # one per visit, the baseline's all zero
    tracks: tuple[Track, ...]
    scene: _Scene  # the anatomy without the tracked nodules (they are drawn per visit)
    z0_mm: float  # the baseline plane's position across the canvas
    subj: Subject = field(repr=False)
    elevation_fwhm_mm: float
    attempt: int  # the scene attempt that gave the first tracked nodule (docs: enrolment)
    textures: dict = field(repr=False, compare=False)  # the tissue textures in the baseline plane (canvas)

    @property
    def visits(self) -> int:
        return len(self.dates)

    @property
    def margin_px(self) -> tuple[int, int]:
        """(rows below, columns either side) of the canvas beyond the baseline frame."""
        return math.ceil(DEPTH_MARGIN_MM / self.spacing_mm - 1e-9), math.ceil(
            LATERAL_MARGIN_MM / self.spacing_mm - 1e-9
        )

    @property
    def canvas_shape(self) -> tuple[int, int]:
        below, side = self.margin_px
        return self.shape[0] + below, self.shape[1] + 2 * side

    @property
    def width_mm(self) -> float:
        return self.shape[1] * self.spacing_mm

    def days(self, visit: int) -> int:
        return (self.dates[visit] - self.dates[0]).days

    def sample_id(self, visit: int) -> str:
        return f"{self.subject_id}_v{visit}"


def draw_study(
    seed: int,
    subject: int,
    *,
    visits_min: int = DEFAULT_VISITS_MIN,
    visits_max: int = DEFAULT_VISITS_MAX,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    spacing_mm: float = DEFAULT_SPACING_MM,
) -> Study:
    """Subject ``subject``'s study: visits (uniform in [visits_min, visits_max]), dates, probe placements, the
    anatomy and its tracked trigger points with their responses. Deterministic per (seed, subject)."""
    check_longitudinal_arguments(1, visits_min, visits_max, height, width, spacing_mm, seed)
    subj, elevation_fwhm, yaw = _subject(seed, subject, float(spacing_mm))
    design = _rng(seed, STREAM, 1, subject)
    visits = int(design.integers(visits_min, visits_max + 1))
    start = BASELINE_DATE + datetime.timedelta(days=int(design.integers(0, ENROLMENT_DAYS)))
    gaps = design.integers(VISIT_INTERVAL_DAYS[0], VISIT_INTERVAL_DAYS[1] + 1, max(0, visits - 1))
    dates = tuple(start + datetime.timedelta(days=int(d)) for d in np.concatenate([[0], np.cumsum(gaps)]))
    placements = _draw_placements(design, visits, subj)
    study = Study(
        seed=int(seed), subject=int(subject), subject_id=f"s{subject:03d}", shape=(int(height), int(width)),
        spacing_mm=float(spacing_mm), dates=dates, placements=placements, tracks=(), scene=None,
        z0_mm=SCENE_LENGTH_MM / 2, subj=subj, elevation_fwhm_mm=elevation_fwhm, attempt=-1, textures={},
    )  # fmt: skip
    canvas = study.canvas_shape
    side_mm = study.margin_px[1] * study.spacing_mm
    fallback = None
    for attempt in range(SCENE_ATTEMPTS):
        scene = _draw_scene(_rng(seed, STREAM, 2, subject, attempt), subj, yaw, canvas, SCENE_LENGTH_MM,
                            SCENE_GRID_MM)  # fmt: skip
        fates = _rng(seed, STREAM, 3, subject, attempt)
        inside = [
            k for k, trp in enumerate(scene.trps)
            if side_mm + INDEX_MARGIN_MM <= trp.centre[0] <= side_mm + study.width_mm - INDEX_MARGIN_MM
        ]  # fmt: skip
        index = int(inside[int(fates.integers(len(inside)))]) if inside else -1
        z0 = scene.trps[index].centre[2] if inside else SCENE_LENGTH_MM / 2
        candidate = replace(study, scene=replace(scene, trps=()), z0_mm=float(z0), attempt=attempt)
        tracks = []
        for k, trp in enumerate(scene.trps):
            track = Track(len(tracks) + 1, trp, _draw_response(fates, visits, k == index))
            if _visible_throughout(candidate, track):
                tracks.append(track)
        candidate = replace(candidate, tracks=tuple(tracks))
        if fallback is None:
            fallback = candidate
        if any(t.response.appears_at == 0 for t in tracks):
            break
    else:
        candidate = fallback  # no scene gave a nodule at baseline: a subject without trigger points
    textures = _Textures(_rng(seed, STREAM, 4, subject), subj, canvas, candidate.scene.septa_angle_rad,
                         elevation_fwhm).advance(math.inf)  # fmt: skip
    # The speckle is drawn anew at every visit (render_visit): only the tissue's textures are kept.
    return replace(candidate, textures={k: v for k, v in textures.items() if k != "scatterers"})


def _visible_throughout(study: Study, track: Track) -> bool:
    """True when every visit that has the nodule shows a section of at least MIN_SECTION_FRACTION of its central
    area, wholly at least FRAME_MARGIN_MM inside that visit's frame."""
    s = study.spacing_mm
    height_mm, width_mm = study.shape[0] * s, study.width_mm
    side_mm = study.margin_px[1] * s
    for visit, placement in enumerate(study.placements):
        trp = track.at(visit)
        if trp is None:
            continue
        found = trp.in_slice(study.z0_mm + placement.dz_mm, s, study.canvas_shape)
        if found is None:
            return False
        rows, cols, r = found
        rr, cc = np.nonzero(r < 1.0)
        if rr.size * s * s < MIN_SECTION_FRACTION * math.pi * trp.semi[0] * trp.semi[1]:
            return False
        x, y = placement.from_baseline_mm((cols.start + cc + 0.5) * s - side_mm, (rows.start + rr + 0.5) * s,
                                          width_mm)  # fmt: skip
        m = FRAME_MARGIN_MM
        if x.min() < m or x.max() > width_mm - m or y.min() < m or y.max() > height_mm - m:
            return False
    return True


# ------------------------------------------------------------------------------------------------ a visit
def _frame_maps(study: Study, placement: ProbePlacement) -> tuple[np.ndarray, np.ndarray]:
    """Canvas pixel coordinates (cv2.remap's maps) of every pixel of the visit's frame."""
    s = study.spacing_mm
    height, width = study.shape
    x = ((np.arange(width, dtype=np.float64) + 0.5) * s)[None, :]
    y = ((np.arange(height, dtype=np.float64) + 0.5) * s)[:, None]
    xb, yb = placement.to_baseline_mm(x, y, study.width_mm)
    side_mm = study.margin_px[1] * s
    map_x = np.broadcast_to((xb + side_mm) / s - 0.5, study.shape).astype(np.float32)
    map_y = np.broadcast_to(yb / s - 0.5, study.shape).astype(np.float32)
    return map_x, map_y


def _warp(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], nearest: bool, outside: float | None):
    """The canvas ``image`` as the visit's frame sees it; ``outside``: the value beyond the canvas (gel above
    the skin), None = the nearest canvas edge."""
    border = cv2.BORDER_REPLICATE if outside is None else cv2.BORDER_CONSTANT
    return cv2.remap(
        image, maps[0], maps[1], cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR, borderMode=border,
        borderValue=0 if outside is None else outside,
    )  # fmt: skip


def _visit_swe_box(rng: np.random.Generator, tracks: np.ndarray, s: float) -> _SweBox:
    """The literature preset's SWE box (size, resolution, voids), placed by the operator over the tracked
    nodules of this visit (their bounding box's centre, +/- SWE_BOX_JITTER_MM), or anywhere when there are none.
    Voids sit at sweep position 0, the plane ``_swe_slice`` is asked for."""
    ranges = appearance_ranges("literature")
    height_mm, width_mm = tracks.shape[0] * s, tracks.shape[1] * s
    box_w = min(float(rng.uniform(*ranges.swe_box_width_mm)), 0.9 * width_mm)
    box_h = min(float(rng.uniform(*ranges.swe_box_height_mm)), height_mm - 1.0)
    rows, cols = np.nonzero(tracks)
    if rows.size:
        cx = (cols.min() + cols.max() + 1) / 2 * s + rng.uniform(-SWE_BOX_JITTER_MM, SWE_BOX_JITTER_MM)
        cy = (rows.min() + rows.max() + 1) / 2 * s + rng.uniform(-SWE_BOX_JITTER_MM, SWE_BOX_JITTER_MM)
    else:
        cx = rng.uniform(box_w / 2, width_mm - box_w / 2)
        cy = rng.uniform(*ranges.swe_box_top_mm) + box_h / 2
    left = min(max(cx - box_w / 2, 0.0), width_mm - box_w)
    top = min(max(cy - box_h / 2, ranges.swe_box_top_mm[0]), height_mm - box_h)
    voids = tuple(
        (float(rng.uniform(left, left + box_w)), float(rng.uniform(top, top + box_h)), 0.0,
         *(float(v) for v in rng.uniform(0.8, 2.5, 3)))
        for _ in range(_draw_count(rng, SWE_VOID_COUNTS))
    )  # fmt: skip
    return _SweBox(float(left), float(top), box_w, box_h, float(rng.uniform(*ranges.swe_fwhm_mm)), voids)


def render_visit(study: Study, visit: int) -> dict:
    """Visit ``visit``'s frame and its truth.

    Returns ``{"bmode": uint8 (H, W), "elasto": float32 kPa, NaN = no signal, "mask": uint8 labels
    (DEFAULT_CLASSES), "tracks": uint16 track ids (0 = none), "kpa": float32 the Young's modulus as drawn (before
    the SWE's blur and noise), "tissue": uint8 synth.py tissue codes, "spacing_mm", "truth": dict}``; the truth
    names the visit, its date, the probe placement and its affine to the baseline frame, and one record per
    track known by then (``tracks.csv``'s columns)."""
    placement = study.placements[visit]
    s, canvas = study.spacing_mm, study.canvas_shape
    present = [(t, t.at(visit)) for t in study.tracks]
    present = [(t, e) for t, e in present if e is not None]
    scene = replace(study.scene, trps=tuple(e for _, e in present))
    rng = _rng(study.seed, STREAM, 5, study.subject, visit)
    # The tissue textures change across the plane as synth_sweeps' do between slices; the speckle is new (weeks
    # apart, the tissue's pressure and posture differ by more than a speckle grain), so it is drawn in the frame.
    textures = _Textures(rng, study.subj, canvas, scene.septa_angle_rad, study.elevation_fwhm_mm)
    textures.fields = dict(study.textures)
    fields = textures.advance(abs(placement.dz_mm))
    plane_mm = study.z0_mm + placement.dz_mm
    db, kpa, mask, tissue = _render_slice(scene, study.subj, plane_mm, fields, canvas, 1.0, 0.0)
    track_map = np.zeros(canvas, np.uint16)
    for track, trp in present:  # the pixels _render_slice labels, by track
        found = trp.in_slice(plane_mm, s, canvas)
        if found is not None:
            rows, cols, r = found
            track_map[rows, cols][r < 1.0] = track.track_id

    maps = _frame_maps(study, placement)
    db = _warp(db, maps, nearest=False, outside=-55.0)  # gel above the skin: synth's near-field echo
    kpa = _warp(kpa, maps, nearest=False, outside=None)
    mask = _warp(mask, maps, nearest=True, outside=0)
    tissue = _warp(tissue, maps, nearest=True, outside=NEAR_FIELD)
    track_map = _warp(track_map, maps, nearest=True, outside=0)
    scatterers = rng.standard_normal((*study.shape, 2), dtype=np.float32)
    depth = ((np.arange(study.shape[0], dtype=np.float32) + 0.5) * s)[:, None]
    subj = replace(study.subj, gain_db=placement.gain_db, tgc_fraction=placement.tgc_fraction)
    bmode = _bmode_from_scatterers(scatterers, db, depth, subj)
    box = _visit_swe_box(rng, track_map, s)
    elasto = _swe_slice(rng, kpa, tissue, 0.0, study.subj, box)  # the box's voids lie in plane 0
    return {
        "bmode": bmode,
        "elasto": elasto,
        "mask": mask,
        "tracks": track_map,
        "kpa": kpa,
        "tissue": tissue,
        "spacing_mm": s,
        "truth": _visit_truth(study, visit, track_map, kpa, box),
    }


def _visit_truth(study: Study, visit: int, track_map: np.ndarray, kpa: np.ndarray, box: _SweBox) -> dict:
    placement = study.placements[visit]
    s = study.spacing_mm
    records = []
    for track in study.tracks:
        status = track.status(visit)
        if status is None:
            continue
        record = _track_record(study, visit, track, status)
        trp = track.at(visit)
        if trp is not None:
            rows, cols = np.nonzero(track_map == track.track_id)
            x, y = float(((cols + 0.5) * s).mean()), float(((rows + 0.5) * s).mean())
            xb, yb = placement.to_baseline_mm(x, y, study.width_mm)
            values = kpa[rows, cols]
            softening, shrinkage = track.effect(visit)
            record.update(
                x_mm=x, y_mm=y, x_base_mm=float(xb), y_base_mm=float(yb), area_mm2=rows.size * s * s,
                stiffness_kpa_mean=float(values.mean()), stiffness_kpa_max=float(values.max()),
                softening=softening, shrinkage=shrinkage,
            )  # fmt: skip
            record["class"] = DEFAULT_CLASSES[trp.label]
            side_mm = study.margin_px[1] * s
            cx, cy, cz = trp.centre
            record["ellipsoid"] = {
                "centre_baseline_mm": [round(cx - side_mm, 4), round(cy, 4), round(cz - study.z0_mm, 4)],
                "semi_axes_mm": [round(float(v), 4) for v in trp.semi],
                "stiffness_ratio": round(float(trp.ratio), 4),
            }
        records.append(record)
    return {
        "sample_id": study.sample_id(visit),
        "subject_id": study.subject_id,
        "visit": study.dates[visit].isoformat(),
        "visit_index": visit,
        "days_since_baseline": study.days(visit),
        "event": _event(study, visit),
        "spacing_mm": s,
        "probe": {
            "dx_mm": round(placement.dx_mm, 4),
            "dz_mm": round(placement.dz_mm, 4),
            "tilt_deg": round(placement.tilt_deg, 4),
            "gain_db": round(placement.gain_db, 4),
            "tgc_fraction": round(placement.tgc_fraction, 4),
            "gain_offset_db": round(placement.gain_db - study.placements[0].gain_db, 4),
        },
        "affine_to_baseline_mm": [
            [round(float(v), 8) for v in row] for row in placement.affine_to_baseline(study.width_mm)
        ],
        "swe_box_mm": {
            "left": round(box.left_mm, 4),
            "top": round(box.top_mm, 4),
            "width": round(box.width_mm, 4),
            "height": round(box.height_mm, 4),
        },
        "tracks": [_rounded(r) for r in records],
    }


def _event(study: Study, visit: int) -> dict | None:
    if visit != 0:
        return None
    return {
        "kind": INJECTION,
        "date": study.dates[0].isoformat(),
        "after_scan": True,
        "notes": INJECTION_NOTES,
    }


def _track_record(study: Study, visit: int, track: Track, status: str) -> dict:
    """A tracks.csv row with the measurements empty (what a resolved nodule's row keeps)."""
    placement = study.placements[visit]
    last_seen = next(track.at(v) for v in range(visit, -1, -1) if track.at(v) is not None)
    record: dict = {name: None for name in TRACK_COLUMNS}
    record.update(
        subject_id=study.subject_id, sample_id=study.sample_id(visit), visit=study.dates[visit].isoformat(),
        visit_index=visit, days_since_baseline=study.days(visit), track_id=track.track_id, status=status,
        dx_mm=placement.dx_mm, dz_mm=placement.dz_mm, tilt_deg=placement.tilt_deg, gain_db=placement.gain_db,
    )  # fmt: skip
    record["class"] = DEFAULT_CLASSES[last_seen.label]
    return record


def _rounded(record: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}


# ------------------------------------------------------------------------------------------------ writing
def write_study_files(root: Path, study: Study) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """One study's frames (bmode/, masks/, elasto/ as tpnet.data.synth writes them), ``truth/<sample_id>.json``
    and ``truth/<sample_id>_tracks.png`` per visit; its manifest rows and tracks.csv rows."""
    rows, track_rows = [], []
    for visit in range(study.visits):
        frame = render_visit(study, visit)
        sample_id = study.sample_id(visit)
        row = write_frame_files(root, frame, sample_id, study.subject_id)
        row["visit"] = study.dates[visit].isoformat()
        row["event"] = INJECTION if visit == 0 else ""
        rows.append({name: row[name] for name in MANIFEST_COLUMNS})
        write_png(root / "truth" / f"{sample_id}_tracks.png", frame["tracks"])
        truth = frame["truth"]
        (root / "truth" / f"{sample_id}.json").write_text(json.dumps(truth, indent=1) + "\n")
        track_rows.extend(
            {name: _cell(record.get(name)) for name in TRACK_COLUMNS} for record in truth["tracks"]
        )
    return rows, track_rows


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _write_subject(job: tuple[Path, int, int, dict]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    root, seed, subject, settings = job
    return write_study_files(root, draw_study(seed, subject, **settings))


def check_longitudinal_arguments(
    subjects: int, visits_min: int, visits_max: int, height: int, width: int, spacing_mm: float, seed: int
) -> None:
    """ValueError for settings the generator cannot honour (checked before anything is drawn or written)."""
    if subjects < 1:
        raise ValueError(f"need at least one subject (got {subjects})")
    if not 1 <= visits_min <= visits_max <= MAX_VISITS:
        raise ValueError(
            f"visits must satisfy 1 <= visits_min <= visits_max <= {MAX_VISITS} (got {visits_min}, {visits_max})"
        )
    if height < 32 or width < 32:
        raise ValueError(f"frames must be at least 32x32 pixels (got {height}x{width})")
    if not (math.isfinite(spacing_mm) and 0.02 <= spacing_mm <= 1.0):
        raise ValueError(f"spacing_mm must be 0.02-1.0 mm (got {spacing_mm!r})")
    if seed < 0:
        raise ValueError(f"seed must be non-negative (got {seed})")


def generator_parameters() -> dict:
    """Every number of the model (dataset.yaml's ``generator.model``)."""
    ranges = appearance_ranges("literature")
    return {
        "calendar": {
            "baseline_date": BASELINE_DATE.isoformat(),
            "enrolment_days": ENROLMENT_DAYS,
            "visit_interval_days": list(VISIT_INTERVAL_DAYS),
        },
        "injection": {
            "given": "after the baseline scan, on its date",
            "event_row": "the baseline visit",
            "notes": INJECTION_NOTES,
        },
        "probe": {
            "lateral_sd_mm": LATERAL_SD_MM,
            "lateral_max_mm": LATERAL_MAX_MM,
            "elevation_sd_mm": ELEVATION_SD_MM,
            "elevation_max_mm": ELEVATION_MAX_MM,
            "tilt_sd_deg": TILT_SD_DEG,
            "tilt_max_deg": TILT_MAX_DEG,
            "gain_db": list(ranges.gain_db),
            "tgc_fraction": list(ranges.tgc_fraction),
        },
        "response": {
            "responder_p": RESPONDER_P,
            "resolve_p": RESOLVE_P,
            "softening_fraction": list(SOFTENING_FRACTION),
            "shrink_per_softening": list(SHRINK_PER_SOFTENING),
            "new_trp_p": NEW_TRP_P,
        },
        "scene": {
            "length_mm": SCENE_LENGTH_MM,
            "grid_mm": SCENE_GRID_MM,
            "lateral_margin_mm": LATERAL_MARGIN_MM,
            "depth_margin_mm": DEPTH_MARGIN_MM,
            "index_margin_mm": INDEX_MARGIN_MM,
            "scene_attempts": SCENE_ATTEMPTS,
            "min_section_fraction": MIN_SECTION_FRACTION,
            "frame_margin_mm": FRAME_MARGIN_MM,
            "swe_box_jitter_mm": SWE_BOX_JITTER_MM,
        },
    }


def write_longitudinal_dataset(
    root: str | Path,
    subjects: int = DEFAULT_SUBJECTS,
    visits_min: int = DEFAULT_VISITS_MIN,
    visits_max: int = DEFAULT_VISITS_MAX,
    seed: int = 0,
    height: int = DEFAULT_HEIGHT,
    width: int = DEFAULT_WIDTH,
    spacing_mm: float = DEFAULT_SPACING_MM,
    workers: int | None = None,
) -> Path:
    """Write a contract dataset of longitudinal studies to ``root``: dataset.yaml (``synthetic: true``, the
    classes, kPa, a ``generator`` block with the seed and every parameter), manifest.csv (MANIFEST_COLUMNS: one
    row per visit, ``visit`` an ISO date, ``event`` ``injection`` on the baseline row), the frames, and
    ``truth/`` (per visit ``<sample_id>.json`` and the uint16 track map ``<sample_id>_tracks.png``; all visits'
    ``tracks.csv``, TRACK_COLUMNS). ``workers`` processes (default: one per core, at most one per subject) write
    the same bytes as one."""
    check_longitudinal_arguments(subjects, visits_min, visits_max, height, width, spacing_mm, seed)
    root = Path(root)
    for folder in ("bmode", "elasto", "masks", "truth"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    settings = {"visits_min": int(visits_min), "visits_max": int(visits_max), "height": int(height),
                "width": int(width), "spacing_mm": float(spacing_mm)}  # fmt: skip
    jobs = [(root, int(seed), subject, settings) for subject in range(subjects)]
    processes = min(workers or os.cpu_count() or 1, subjects)
    if processes > 1:
        with multiprocessing.get_context().Pool(processes) as pool:
            per_subject = pool.map(_write_subject, jobs, chunksize=1)
    else:
        per_subject = [_write_subject(job) for job in jobs]
    with (root / "truth" / "tracks.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(TRACK_COLUMNS), lineterminator="\n")
        writer.writeheader()
        for _, track_rows in per_subject:
            writer.writerows(track_rows)
    generator = {"name": GENERATOR_NAME, "version": GENERATOR_VERSION, "seed": int(seed),
                 "subjects": int(subjects), **settings, "model": generator_parameters()}  # fmt: skip
    spec = {
        "name": f"synthetic-trapezius-longitudinal-s{seed}",
        "contract_version": 1,  # frames only
        "classes": list(DEFAULT_CLASSES),
        "elasto_unit": "kPa",
        "synthetic": True,  # no patient behind these studies
        "generator": generator,
    }
    return write_contract_files(root, spec, MANIFEST_COLUMNS, (rows for rows, _ in per_subject))
