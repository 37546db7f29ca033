"""The tracking stage's rules on hand-made frames and records (no model): which frame a visit is tracked on, the
days since an injection, what leaves a visit out and why, and one subject's failure never costs another."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from longitudinal_scenes import A, scene_frame
from tpnet.inference.cli import CSV_COLUMNS
from tpnet.inference.inputs import FrameInput, Rejection
from tpnet.inference.longitudinal_run import (
    detections_from_rows,
    page_names,
    track_study,
    track_subject,
)
from tpnet.inference.progress import FrameRecord
from tpnet.inference.study import VisitInfo

SPACING_MM = 0.1


def _frame(stem, subject, visit, event="", kind="image", spacing_mm=SPACING_MM, **more):
    info = VisitInfo(visit, event=event, source="study.csv") if visit else None
    return FrameInput(
        stem, stem, Path(f"/nowhere/{stem}.png"), None, spacing_mm, "cli", kind=kind, subject_id=subject,
        visit=info, **more,
    )  # fmt: skip


def _row(stem, trp_id, x_mm, y_mm, kpa=40.0, area=5.0):
    cells = dict.fromkeys(CSV_COLUMNS, "")
    cells.update(
        stem=stem, trp_id=str(trp_id), x_mm=f"{x_mm:.3f}", y_mm=f"{y_mm:.3f}", area_mm2=f"{area:.3f}",
        stiffness_kpa_mean=f"{kpa:.2f}", stiffness_kpa_max=f"{kpa + 5:.2f}", stiffness_kpa_sd="2.0",
        swe_coverage="1.0", confidence="0.9", depth_from_skin_mm="5.0", **{"class": "active_trp"},
    )  # fmt: skip
    return [cells[c] for c in CSV_COLUMNS]


def _record(stem, rows=(), rejected=None):
    return FrameRecord(stem, stem, rows=list(rows), rejected_reason=rejected)


PROBE_X = {"v1": 5.0, "v2": 6.5, "v3": 4.0}


def _loader(empty=()):
    def load(frame):
        if frame.stem in empty:
            return np.zeros((120, 200), np.float32), None
        visit = frame.stem.rsplit("_", 1)[1]
        return scene_frame(PROBE_X[visit], [(*A, 1.3, 40.0)])[0], None

    return load


def _study_rows(stem, visit):
    # A at world x 12: in the visit frame at 12 - probe x.
    return [_row(stem, 1, A[0] - PROBE_X[visit], A[1])]


def test_detections_are_read_back_from_the_csv_rows():
    rows = [_row("s", 1, 3.0, 4.0, kpa=41.0), [*(["s"] + [""] * (len(CSV_COLUMNS) - 1))]]
    (d,) = detections_from_rows(rows, CSV_COLUMNS)  # the "no trigger point found" row gives none
    assert (d.x_mm, d.y_mm, d.stiffness_kpa_mean, d.stiffness_kpa_max, d.class_name) == (
        3.0, 4.0, 41.0, 46.0, "active_trp",
    )  # fmt: skip


def test_injection_counts_from_its_visit_and_the_order_is_by_date():
    frames = [
        _frame("p_v3", "p", "2026-03-01"),
        _frame("p_v1", "p", "2026-01-01", event="injection"),
        _frame("p_v2", "p", "2026-01-15"),
    ]
    records = {f.stem: _record(f.stem, _study_rows(f.stem, f.stem[-2:])) for f in frames}
    result = track_subject("p", frames, records, [], CSV_COLUMNS, load=_loader())
    assert [v.visit_id for v in result.visits] == ["2026-01-01", "2026-01-15", "2026-03-01"]
    assert [v.days_since_injection for v in result.visits] == [None, 14.0, 59.0]
    assert [v.days_since_first for v in result.visits] == [0.0, 14.0, 59.0]
    assert result.status == "tracked" and len({r.track_id for r in result.tracks}) == 1


def test_a_visit_is_tracked_on_one_frame_and_the_others_are_named():
    frames = [_frame("p_v1", "p", "1"), _frame("p_v2", "p", "2"), _frame("p_v2b", "p", "2")]
    records = {f.stem: _record(f.stem, _study_rows(f.stem, "v2" if "v2" in f.stem else "v1")) for f in frames}
    result = track_subject("p", frames, records, [], CSV_COLUMNS, load=lambda f: _loader()(_frame(
        f.stem.replace("v2b", "v2"), "p", "2")))  # fmt: skip
    assert [v.stem for v in result.visits] == ["p_v1", "p_v2"]
    assert any("2 frames for this visit: tracked on p_v2" in p for p in result.problems)
    assert all(math.isnan(v.days_since_first) for v in result.visits)  # ordinal visits: no days


def test_mixed_dates_and_ordinals_are_not_guessed():
    frames = [_frame("p_v1", "p", "2026-01-01"), _frame("p_v2", "p", "2")]
    records = {f.stem: _record(f.stem) for f in frames}
    result = track_subject("p", frames, records, [], CSV_COLUMNS, load=_loader())
    assert result.status == "not tracked" and "mix dates and ordinals" in result.problems[0]


def test_what_leaves_a_visit_out_is_named():
    frames = [
        _frame("p_v1", "p", "2026-01-01"),
        _frame("p_v2", "p", "2026-01-08"),  # empty frame
        _frame("p_v3", "p", "2026-01-15", spacing_mm=None),  # pixel size unknown
    ]
    records = {f.stem: _record(f.stem, _study_rows(f.stem, f.stem[-2:])) for f in frames}
    result = track_subject("p", frames, records, [], CSV_COLUMNS, load=_loader(empty={"p_v2"}))
    problems = {v.visit_id: v.problem for v in result.visits}
    assert "registration to the baseline (2026-01-01) failed" in problems["2026-01-08"]
    assert "pixel size unknown" in problems["2026-01-15"]
    assert result.status == "baseline only"
    # An empty frame never marks a TrP resolved: the visit is out of the tracks altogether.
    assert {r.visit_id for r in result.tracks} == {"2026-01-01"}


def test_a_frame_that_cannot_be_read_again_costs_only_its_visit():
    frames = [_frame("p_v1", "p", "1"), _frame("p_v2", "p", "2"), _frame("p_v3", "p", "3")]
    records = {f.stem: _record(f.stem, _study_rows(f.stem, f.stem[-2:])) for f in frames}
    good = _loader()

    def load(frame):
        if frame.stem == "p_v2":
            raise OSError("p_v2.png: removed since the run read it")
        return good(frame)

    result = track_subject("p", frames, records, [], CSV_COLUMNS, load=load)
    assert "cannot re-read" in result.visits[1].problem
    assert result.status == "tracked" and {r.visit_id for r in result.tracks} == {"1", "3"}


def test_subjects_fail_alone_and_missing_visits_reach_their_subject():
    frames = [_frame(f"p_{v}", "p", str(i)) for i, v in enumerate(("v1", "v2"), 1)]
    frames += [_frame("q_v1", "q", "1"), _frame("loose", None, None)]
    records = {f.stem: _record(f.stem, _study_rows(f.stem, f.stem[-2:])) for f in frames if f.subject_id}

    def load(frame):
        if frame.subject_id == "q":
            raise RuntimeError("boom")  # not an I/O error: still this subject's only
        return _loader()(frame)

    missing = Rejection(
        "study.csv line 9 (r_v1)", "listed for subject r, visit 1, but no such frame", "r", "1"
    )
    result = track_study(frames, list(records.values()), [missing], CSV_COLUMNS, load=load)
    by_id = {s.subject_id: s for s in result.subjects}
    assert by_id["p"].status == "tracked"
    assert by_id["q"].status == "not tracked" and "boom" in " ".join(by_id["q"].all_problems())
    assert by_id["r"].status == "not tracked" and "no such frame" in by_id["r"].problems[0]
    assert "1 frame(s) belong to no study" in result.notes[0]


@pytest.mark.parametrize(
    ("ids", "names"),
    [
        (["p1", "P1"], ["p1.html", "P1_2.html"]),  # case-insensitive file systems
        (["../etc/passwd", "a b"], ["etc_passwd.html", "a_b.html"]),
        (["", "..."], ["patient.html", "patient_2.html"]),
    ],
)
def test_page_names_are_safe_and_unique(ids, names):
    assert list(page_names(ids).values()) == names
