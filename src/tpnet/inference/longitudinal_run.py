"""``tpnet-infer --longitudinal`` (issue #18): after every frame is analysed, follow each patient's trigger points
across visits and write tracks.csv, changes.csv, visits.csv and one report page per patient.

Per subject (``FrameInput.subject_id``) and visit (``FrameInput.visit``: study.csv, the manifest's ``visit`` column
or DICOM PatientID + StudyDate, ``tpnet.inference.study``):

1. One frame per visit is tracked: the first analysed one in name order (tpnet follows a TrP on one view of the
   muscle; the visit's other frames are named and left out). 3-D sweeps are not tracked across visits.
2. A visit is left out, with its reason, when its frame was not analysed (a broken file), its pixel size is
   unknown (positions in mm are what is compared), or its registration to the baseline found no shift at all
   (an empty frame: no anatomy to register on). An empty frame says nothing about the TrPs, so its visit never
   marks them resolved. A registration that found a shift but fails a reliability rule keeps the visit, and
   every row of it is flagged with the reason (``tpnet.core.longitudinal``).
3. The baseline is the first visit kept. Each later visit is registered on the baseline's anatomy, its TrPs
   matched, and the tracks and their changes from each track's first visit are measured
   (``build_tracks``, ``track_changes``).

Positions: ``x_mm``/``y_mm`` in the visit's frame (the CSV's), ``x_baseline_mm``/``y_baseline_mm`` in the
baseline frame, i.e. relative to the patient's anatomy as registered (DICOM frames: inside their image region),
and ``depth_from_skin_mm`` below the skin line. Nothing here executes a model: it reads the run's rows, re-reads
each tracked frame's B-mode for its anatomy profile, and the masks the run wrote.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import cv2
import numpy as np

from tpnet.core.atomic import atomic_write_text
from tpnet.core.csv_safe import safe_row
from tpnet.core.longitudinal import (
    AnatomyProfile,
    Change,
    Detection,
    Registration,
    TrackRow,
    Visit,
    anatomy_profile,
    build_tracks,
    register,
    track_changes,
    visit_order,
)
from tpnet.inference.inputs import FrameInput, Rejection, load_frame
from tpnet.inference.progress import FrameRecord

MAX_MATCH_DISTANCE_MM = 5.0  # a TrP found again within this of its track's last position continues it
TRACK_COLUMNS: tuple[str, ...] = (
    "subject_id", "track_id", "visit", "visit_date", "days_since_first", "days_since_injection", "stem",
    "status", "x_baseline_mm", "y_baseline_mm", "depth_from_skin_mm", "x_mm", "y_mm", "area_mm2",
    "stiffness_kpa_mean", "stiffness_kpa_max", "stiffness_kpa_sd", "swe_coverage", "class", "confidence",
    "match_distance_mm", "flagged", "flag_reason",
)  # fmt: skip
CHANGE_COLUMNS: tuple[str, ...] = (
    "subject_id", "track_id", "reference_visit", "visit", "days_since_first", "days_since_injection", "status",
    "delta_stiffness_kpa_mean", "delta_stiffness_kpa_mean_sd", "delta_stiffness_kpa_max",
    "delta_stiffness_kpa_max_sd", "delta_area_mm2", "delta_area_mm2_sd", "relative_area_change", "flagged",
    "flag_reason",
)  # fmt: skip
VISIT_COLUMNS: tuple[str, ...] = (
    "subject_id", "visit", "visit_date", "days_since_first", "days_since_injection", "stem", "events",
    "tracked", "problem", "lateral_shift_mm", "depth_shift_mm", "tilt_deg", "residual_mm",
    "registration_reliable", "registration_reason",
)  # fmt: skip
PATIENTS_DIR = "patients"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class VisitEntry:
    """One visit of one subject: the frame tracked for it (None when none could be) and what happened."""

    visit_id: str
    date: str  # ISO date, "" for an ordinal visit
    days_since_first: float  # NaN for ordinal visits
    days_since_injection: float | None
    events: list[str]
    stem: str = ""
    frame: FrameInput | None = None
    detections: list[Detection] = field(default_factory=list)
    registration: Registration | None = None
    problem: str = ""  # why this visit is not tracked ("" = tracked)
    bmode: np.ndarray | None = None  # cropped to the image region (kept for the baseline and latest pictures)
    box_mm: tuple[float, float] = (0.0, 0.0)  # the image region's top-left corner in the frame, mm


@dataclass
class SubjectResult:
    subject_id: str
    status: str  # "tracked", "baseline only" or "not tracked"
    visits: list[VisitEntry]
    tracks: list[TrackRow]
    changes: list[Change]
    problems: list[
        str
    ]  # about the subject as a whole, each with its reason (visits' own: VisitEntry.problem)
    page: str = ""  # relative path of the patient's page, once written
    page_name: str = ""  # the file name its page gets in patients/ (page_names)

    def all_problems(self) -> list[str]:
        """The subject's problems, then each untracked visit's, for the console and summary.json."""
        return self.problems + [
            f"visit {v.visit_id} not tracked: {v.problem}" for v in self.visits if v.problem
        ]

    def summary(self) -> dict:
        return {
            "subject_id": self.subject_id,
            "status": self.status,
            "visits": len(self.visits),
            "visits_tracked": sum(not v.problem for v in self.visits),
            "tracks": len({r.track_id for r in self.tracks}),
            "flagged_rows": sum(r.flagged for r in self.tracks),
            "problems": self.all_problems(),
            "page": self.page,
        }


@dataclass
class StudyResult:
    subjects: list[SubjectResult]
    notes: list[str]  # about the run as a whole (frames in no study, ...)

    def summary(self) -> dict:
        return {"subjects": [s.summary() for s in self.subjects], "notes": self.notes}


# ---- reading the run's results ----


def _float(text: str) -> float:
    try:
        return float(text) if text not in ("", None) else math.nan
    except ValueError:
        return math.nan


def detections_from_rows(rows: Sequence[Sequence[str]], columns: Sequence[str]) -> list[Detection]:
    """The tracked measurements of a frame's detections.csv rows (its "no trigger point found" row gives none)."""
    out = []
    for row in rows:
        cell = dict(zip(columns, row, strict=False))
        if not cell.get("trp_id"):
            continue
        out.append(
            Detection(
                x_mm=_float(cell["x_mm"]),
                y_mm=_float(cell["y_mm"]),
                area_mm2=_float(cell["area_mm2"]),
                stiffness_kpa_mean=_float(cell["stiffness_kpa_mean"]),
                stiffness_kpa_max=_float(cell.get("stiffness_kpa_max", "")),
                stiffness_kpa_sd=_float(cell["stiffness_kpa_sd"]),
                swe_coverage=_float(cell["swe_coverage"]),
                class_name=cell["class"],
                confidence=_float(cell["confidence"]),
                depth_from_skin_mm=_float(cell["depth_from_skin_mm"]),
            )
        )
    return out


# ---- dates and events ----


def _iso(label: str) -> date | None:
    try:
        return date.fromisoformat(label)
    except ValueError:
        return None


def _event_text(frame: FrameInput) -> str:
    info = frame.visit
    if info is None or not info.event:
        return ""
    text = info.event
    if info.event_date and info.event_date != info.visit:
        text += f" on {info.event_date}"
    if info.event_notes:
        text += f" ({info.event_notes})"
    return text


def _injection_dates(
    frames_by_visit: dict[str, list[FrameInput]], order: list[str]
) -> list[tuple[int, date | None]]:
    """(visit index, date) of each injection: an event named like "injection" on any frame of a visit happens
    after its scan, on its event_date when given, else on the visit's date."""
    out = []
    for i, label in enumerate(order):
        for frame in frames_by_visit.get(label, []):
            info = frame.visit
            if info is not None and "inject" in info.event.lower():
                out.append((i, _iso(info.event_date) if info.event_date else _iso(label)))
                break
    return out


def _days_since_injection(
    index: int, when: date | None, injections: list[tuple[int, date | None]]
) -> float | None:
    """Days from the latest injection before this visit's scan (one recorded at an earlier visit, or dated
    before this visit); None when there was none (or dates are unknown)."""
    best = None
    for at, day in injections:
        if day is None or when is None:
            continue
        if at < index or day < when:
            best = day if best is None or day > best else best
    return None if best is None else float((when - best).days)


# ---- one subject ----


def _choose_frames(
    frames: list[FrameInput], records: dict[str, FrameRecord]
) -> tuple[FrameInput | None, str, list[str]]:
    """The frame tracked for one visit: the first analysed (name order), else the first; (frame, problem, notes)."""
    frames = sorted(frames, key=lambda f: f.stem)
    planar = [f for f in frames if f.kind != "sweep"]
    notes = []
    if len(planar) < len(frames):
        notes.append("3-D sweeps are not tracked across visits (only 2-D frames are): left out")
    if not planar:
        return None, "only a 3-D sweep: sweeps are not tracked across visits", notes
    analysed = [f for f in planar if (r := records.get(f.stem)) is not None and r.rejected_reason is None]
    chosen = analysed[0] if analysed else planar[0]
    if len(planar) > 1:
        loops = {f.loop for f in planar if f.loop}
        what = "frames of one cine loop" if len(loops) == 1 and all(f.loop for f in planar) else "frames"
        notes.append(f"{len(planar)} {what} for this visit: tracked on {chosen.name}, the others left out")
    record = records.get(chosen.stem)
    if record is None:
        return chosen, "not analysed (the run did not reach it)", notes
    if record.rejected_reason is not None:
        return chosen, f"not analysed: {record.rejected_reason}", notes
    if chosen.spacing_mm is None:
        return chosen, "pixel size unknown: positions in mm cannot be compared across visits", notes
    return chosen, "", notes


def _cropped(frame: FrameInput, image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    if frame.image_box is None:
        return image, (0, 0)
    x0, y0, x1, y1 = frame.image_box
    height, width = image.shape[:2]
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return image[y0:y1, x0:x1], (x0, y0)


def _in_box(detection: Detection, box_mm: tuple[float, float]) -> Detection:
    return replace(detection, x_mm=detection.x_mm - box_mm[0], y_mm=detection.y_mm - box_mm[1])


def track_subject(
    subject_id: str,
    frames: list[FrameInput],
    records: dict[str, FrameRecord],
    missing: Sequence[Rejection],
    columns: Sequence[str],
    load: Callable[[FrameInput], tuple[np.ndarray, np.ndarray | None]] = load_frame,
) -> SubjectResult:
    """One subject's visits, registrations, tracks and changes (module docstring). ``missing``: visits listed
    for this subject whose frames were not found (named on the page)."""
    by_visit: dict[str, list[FrameInput]] = {}
    for frame in frames:
        by_visit.setdefault(frame.visit.visit, []).append(frame)
    # A listed visit whose frame is missing gets its row (the gap shows in the visit table); others are named.
    absent = {m.visit: m for m in missing if m.visit and m.visit not in by_visit}
    problems = [f"{m.name}: {m.reason}" for m in missing if m.visit not in absent or absent[m.visit] is not m]
    labels = list(by_visit) + list(absent)
    dated = [_iso(label) is not None for label in labels]
    if any(dated) and not all(dated):
        problems.append(
            f"visits mix dates and ordinals ({', '.join(sorted(labels))}): their order is unknown"
        )
        return SubjectResult(subject_id, "not tracked", [], [], [], problems)
    order = visit_order(labels)
    first_day = _iso(order[0])
    chosen = {
        label: _choose_frames(by_visit[label], records)
        if label in by_visit
        else (None, f"missing: {absent[label].name}: {absent[label].reason}", [])
        for label in order
    }
    injections = _injection_dates(by_visit, order)
    entries: list[VisitEntry] = []
    for i, label in enumerate(order):
        frame, problem, notes = chosen[label]
        day = _iso(label)
        entry = VisitEntry(
            visit_id=label,
            date=label if day else "",
            days_since_first=float((day - first_day).days) if day and first_day else math.nan,
            days_since_injection=_days_since_injection(i, day, injections),
            events=[t for f in by_visit.get(label, []) if (t := _event_text(f))][:1],
            stem=frame.stem if frame else "",
            frame=frame,
            problem=problem,
        )
        problems += [f"visit {label}: {note}" for note in notes]
        entries.append(entry)

    profiles: dict[str, AnatomyProfile] = {}
    for entry in entries:
        if entry.problem:
            continue
        frame = entry.frame
        try:
            bmode, _ = load(frame)
        except Exception as exc:  # changed or removed since the run read it: this visit only
            entry.problem = f"cannot re-read its frame for registration: {exc}"
            continue
        bmode, (x0, y0) = _cropped(frame, np.asarray(bmode, dtype=np.float32))
        entry.box_mm = (x0 * frame.spacing_mm, y0 * frame.spacing_mm)
        try:
            profiles[entry.visit_id] = anatomy_profile(bmode, frame.spacing_mm)
        except ValueError as exc:
            entry.problem = f"no anatomy profile: {exc}"
            continue
        entry.bmode = bmode
        entry.detections = detections_from_rows(records[frame.stem].rows, columns)

    kept = [e for e in entries if not e.problem]
    baseline = kept[0] if kept else None
    for entry in kept[1:]:
        registration = register(profiles[baseline.visit_id], profiles[entry.visit_id])
        entry.registration = registration
        if not registration.has_shift:
            entry.problem = (
                f"registration to the baseline ({baseline.visit_id}) failed: {registration.reason}"
            )
    for entry in entries:
        if entry.problem:
            entry.bmode = None
    kept = [e for e in entries if not e.problem]
    if not kept:
        return SubjectResult(
            subject_id, "not tracked", entries, [], [], problems + ["no visit could be tracked"]
        )

    visits = [
        Visit(
            visit_id=e.visit_id,
            days_since_first=e.days_since_first,  # from the patient's first visit, tracked or not
            detections=[_in_box(d, e.box_mm) for d in e.detections],
            registration=None if e is baseline else e.registration,
            date=e.date,
            days_since_injection=e.days_since_injection,
        )
        for e in kept
    ]
    tracks = build_tracks(visits, MAX_MATCH_DISTANCE_MM, subject_id)
    by_id = {e.visit_id: e for e in kept}
    for k, row in enumerate(tracks):  # the visit frame's own positions, as detections.csv has them
        if row.detection_index is not None:
            d = by_id[row.visit_id].detections[row.detection_index]
            tracks[k] = replace(row, x_mm=d.x_mm, y_mm=d.y_mm)
    changes = track_changes(tracks)
    if len(kept) == 1:
        problems.append(
            f"one visit only ({kept[0].visit_id}) could be tracked: its trigger points are the baseline, "
            "there is no change to measure yet"
        )
        status = "baseline only"
    else:
        status = "tracked"
    if kept[0] is not entries[0]:
        problems.append(
            f"the first visit ({entries[0].visit_id}) could not be tracked: changes are measured from "
            f"{kept[0].visit_id}"
        )
    for entry in kept[1:-1]:
        entry.bmode = None  # only the baseline and latest pictures are drawn
    return SubjectResult(subject_id, status, entries, tracks, changes, problems)


# ---- writing ----


def _cell(value: object, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.{digits}f}"
    return str(value)


def _write_csv(path: Path, header: Sequence[str], lines: list[list[object]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(safe_row([_cell(v) for v in line]) for line in lines)
    atomic_write_text(path, buffer.getvalue())


def write_tables(output_dir: Path, result: StudyResult) -> None:
    """tracks.csv, changes.csv and visits.csv (header only when there is nothing to list)."""
    track_lines, change_lines, visit_lines = [], [], []
    for subject in result.subjects:
        entry = {e.visit_id: e for e in subject.visits}
        for r in subject.tracks:
            v = entry[r.visit_id]
            track_lines.append([
                r.subject_id, r.track_id, r.visit_id, v.date, r.days_since_first, r.days_since_injection, v.stem,
                r.status, r.x_base_mm, r.y_base_mm, r.depth_from_skin_mm, r.x_mm, r.y_mm, r.area_mm2,
                r.stiffness_kpa_mean, r.stiffness_kpa_max, r.stiffness_kpa_sd, r.swe_coverage, r.class_name,
                r.confidence, r.match_distance_mm, r.flagged, r.flag_reason,
            ])  # fmt: skip
        for c in subject.changes:
            change_lines.append([
                c.subject_id, c.track_id, c.reference_visit_id, c.visit_id, c.days_since_first,
                c.days_since_injection, c.status, c.delta_stiffness_kpa_mean, c.delta_stiffness_kpa_mean_sd,
                c.delta_stiffness_kpa_max, c.delta_stiffness_kpa_max_sd, c.delta_area_mm2, c.delta_area_mm2_sd,
                c.relative_area_change, c.flagged, c.flag_reason,
            ])  # fmt: skip
        for v in subject.visits:
            reg = v.registration
            visit_lines.append([
                subject.subject_id, v.visit_id, v.date, v.days_since_first, v.days_since_injection, v.stem,
                "; ".join(v.events), not v.problem, v.problem,
                *(
                    (reg.lateral_shift_mm, reg.depth_shift_mm, reg.tilt_deg, reg.residual_mm, reg.reliable,
                     reg.reason)
                    if reg is not None else ("", "", "", "", "", "")
                ),
            ])  # fmt: skip
    _write_csv(output_dir / "tracks.csv", TRACK_COLUMNS, track_lines)
    _write_csv(output_dir / "changes.csv", CHANGE_COLUMNS, change_lines)
    _write_csv(output_dir / "visits.csv", VISIT_COLUMNS, visit_lines)


def page_names(subject_ids: Sequence[str]) -> dict[str, str]:
    """A file name per subject id: safe characters only, unique (ids differing only in odd characters get a
    number)."""
    names: dict[str, str] = {}
    used: set[str] = set()
    for subject in subject_ids:
        base = _SAFE_NAME.sub("_", subject).strip("._")[:80] or "patient"
        name, n = base, 2
        while name.lower() in used:
            name, n = f"{base}_{n}", n + 1
        used.add(name.lower())
        names[subject] = f"{name}.html"
    return names


def _label_map(output_dir: Path, entry: VisitEntry) -> np.ndarray | None:
    path = output_dir / "masks" / f"{entry.stem}.png"
    label_map = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if label_map is None or entry.frame is None:
        return None
    cropped, _ = _cropped(entry.frame, label_map)
    return cropped


def write_patient_page(output_dir: Path, subject: SubjectResult, trp_labels: Sequence[int]) -> None:
    """patients/<page_name>: the subject's trend plot, tables, and its baseline and latest visits' pictures side
    by side; then its pixels are dropped. A page that cannot be drawn or written is the subject's problem only."""
    try:
        _write_page(output_dir, output_dir / PATIENTS_DIR, subject.page_name, subject, trp_labels)
    except Exception as exc:
        subject.problems.append(f"patient page not written ({type(exc).__name__}: {exc})")
    for entry in subject.visits:
        entry.bmode = None


def _write_page(
    output_dir: Path, folder: Path, name: str, subject: SubjectResult, trp_labels: Sequence[int]
) -> None:
    from tpnet.inference import patient_page  # matplotlib and the page template: only when a page is written

    folder.mkdir(exist_ok=True)
    views = [
        patient_page.VisitView(
            visit_id=v.visit_id,
            date=v.date,
            days_since_first=v.days_since_first,
            days_since_injection=v.days_since_injection,
            stem=v.stem,
            events=v.events,
            registration=v.registration,
            problem=v.problem,
        )  # fmt: skip
        for v in subject.visits
    ]
    pictures = {}
    for entry in subject.visits:
        if entry.bmode is None or entry.problem:
            continue
        rows = [
            replace(r, x_mm=r.x_mm - entry.box_mm[0], y_mm=r.y_mm - entry.box_mm[1])
            for r in subject.tracks
            if r.visit_id == entry.visit_id
        ]
        picture = patient_page.track_picture(
            entry.bmode, _label_map(output_dir, entry), trp_labels, rows, entry.frame.spacing_mm,
            f"{subject.subject_id} {entry.visit_id}",
        )  # fmt: skip
        ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        if ok:
            pictures[entry.visit_id] = png.tobytes()
    plot, note = None, ""
    if subject.tracks:
        try:
            plot = patient_page.trend_plot_png(subject.tracks, subject.changes, views)
        except ImportError as exc:  # matplotlib missing from this install
            note = f"trend plot not drawn: {exc}"
    overlays = {
        v.stem for v in subject.visits if v.stem and (output_dir / "overlays" / f"{v.stem}.png").is_file()
    }
    html = patient_page.render_patient_page(
        subject.subject_id, views, subject.tracks, subject.changes, pictures, subject.problems, plot, note,
        overlay_stems=overlays,
    )  # fmt: skip
    patient_page.write_patient_page(folder / name, html)
    subject.page = f"{PATIENTS_DIR}/{name}"


def track_study(
    frames: Sequence[FrameInput],
    records: Sequence[FrameRecord],
    rejected: Sequence[Rejection],
    columns: Sequence[str],
    load: Callable[[FrameInput], tuple[np.ndarray, np.ndarray | None]] = load_frame,
    on_subject: Callable[[SubjectResult], None] | None = None,
) -> StudyResult:
    """Every subject of the study (frames with a subject and a visit), in subject order. ``rejected``: what
    discovery rejected; those naming a subject (``Rejection.subject_id``) are listed on its page. ``on_subject``:
    called with each subject's result as soon as it is tracked (``write_patient_page``: one patient's pictures
    in memory at a time), its ``page_name`` set."""
    by_stem = {r.stem: r for r in records}
    in_study = [f for f in frames if f.subject_id and f.visit is not None]
    notes = []
    outside = len(frames) - len(in_study)
    if outside:
        notes.append(
            f"{outside} frame(s) belong to no study visit (no subject and visit from study.csv, the manifest or "
            "the DICOM header): analysed, not tracked"
        )
    by_subject: dict[str, list[FrameInput]] = {}
    for frame in in_study:
        by_subject.setdefault(frame.subject_id, []).append(frame)
    missing: dict[str, list[Rejection]] = {}
    for r in rejected:
        if r.subject_id:
            missing.setdefault(r.subject_id, []).append(r)
    subjects: list[SubjectResult] = []
    ids = sorted(set(by_subject) | set(missing))
    names = page_names(ids)
    for subject_id in ids:
        try:
            if subject_id in by_subject:
                result = track_subject(
                    subject_id, by_subject[subject_id], by_stem, missing.get(subject_id, []), columns, load
                )
            else:  # only listed visits, none found
                problems = [f"{m.name}: {m.reason}" for m in missing[subject_id]]
                result = SubjectResult(subject_id, "not tracked", [], [], [], problems)
            subjects.append(result)
        except Exception as exc:  # one subject's failure never costs the others their tracks
            problem = f"not tracked: tracking failed ({type(exc).__name__}: {exc})"
            subjects.append(SubjectResult(subject_id, "not tracked", [], [], [], [problem]))
        subjects[-1].page_name = names[subject_id]
        if on_subject is not None:
            on_subject(subjects[-1])
    return StudyResult(subjects, notes)
