"""tpnet-infer --longitudinal end to end (issue #18): a folder of visits with a study.csv, the blob detector of
model_files, and the issue's failure cases (a missing visit, one visit only, an empty frame whose registration
fails, a broken file), each named while every other subject is tracked."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from longitudinal_scenes import SPACING_MM, A, B, C, scene_frame
from model_files import make_model_file
from tpnet.core.io import write_png, write_tiff
from tpnet.inference.cli import main


def _write(folder, stem, bmode, kpa):
    write_png(folder / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
    if kpa is not None:
        write_tiff(folder / f"{stem}_elasto.tif", kpa)
    (folder / f"{stem}.json").write_text(json.dumps({"spacing_mm": SPACING_MM}))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    # p1: injection after the baseline scan; A softens (50 -> 40 -> 35 kPa) and shrinks, B resolves, C appears.
    visits = {
        "p1_v1": (5.0, [(*A, 1.5, 50.0), (*B, 1.0, 45.0)]),
        "p1_v2": (6.5, [(*A, 1.3, 40.0), (*B, 0.9, 42.0)]),
        "p1_v3": (4.0, [(*A, 1.2, 35.0), (*C, 1.0, 48.0)]),
        "p2_v1": (5.0, [(*A, 1.5, 50.0)]),  # one visit only
        "p3_v1": (5.0, [(*A, 1.4, 50.0)]),
        "p3_v3": (5.8, [(*A, 1.3, 45.0)]),
        "p4_v1": (5.0, [(*A, 1.4, 50.0)]),
        "p4_v2": (5.5, [(*A, 1.4, 50.0)]),
    }
    for i, (stem, (probe_x, trps)) in enumerate(visits.items()):
        _write(folder, stem, *scene_frame(probe_x, trps, seed=i))
    _write(folder, "p3_v2", np.zeros((120, 200), np.float32), None)  # an empty frame: nothing to register on
    data = (folder / "p4_v2_bmode.png").read_bytes()
    (folder / "p4_v2_bmode.png").write_bytes(data[: len(data) // 3])  # a broken file
    _write(folder, "other", *scene_frame(5.0, [(*A, 1.5, 50.0)]))  # in no study
    (folder / "study.csv").write_text(
        "stem,subject_id,visit,event,event_notes\n"
        "p1_v1,p1,2026-01-10,injection,1 ml lidocaine 1 %\n"
        "p1_v2,p1,2026-01-24,,\n"
        "p1_v3,p1,2026-02-21,,\n"
        "p2_v1,p2,2026-01-12,,\n"
        "p3_v1,p3,2026-01-05,,\n"
        "p3_v2,p3,2026-01-19,,\n"
        "p3_v3,p3,2026-02-02,,\n"
        "p3_v4,p3,2026-03-02,,\n"  # listed, but its file is missing
        "p4_v1,p4,2026-01-07,,\n"
        "p4_v2,p4,2026-01-21,,\n",
        encoding="utf-8",
    )
    model = make_model_file(tmp_path_factory.mktemp("model"))
    out = tmp_path_factory.mktemp("runs") / "out"
    code = main(["--model", str(model), "--input", str(folder), "--output", str(out), "--longitudinal"])
    study_inputs.update(folder=folder, model=model)
    return code, out


study_inputs: dict = {}  # the study fixture's input folder and model, for the resume test


def _rows(path):
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _near(rows, x_baseline_mm, tolerance_mm=1.0):
    return [
        r
        for r in rows
        if r["x_baseline_mm"] and abs(float(r["x_baseline_mm"]) - x_baseline_mm) < tolerance_mm
    ]


def test_failures_are_named_and_the_exit_code_says_so(study):
    code, out = study
    assert code == 3  # the broken file and the missing visit are rejected inputs
    summary = json.loads((out / "summary.json").read_text())
    subjects = {s["subject_id"]: s for s in summary["longitudinal"]["subjects"]}
    assert {k: s["status"] for k, s in subjects.items()} == {
        "p1": "tracked", "p2": "baseline only", "p3": "tracked", "p4": "baseline only",
    }  # fmt: skip
    p3 = " | ".join(subjects["p3"]["problems"])
    assert "p3_v4" in p3 and ("not found" in p3.lower() or "no such frame" in p3.lower())
    assert "2026-01-19" in p3 and "registration" in p3 and "no interface" in p3
    assert "one visit only" in " ".join(subjects["p2"]["problems"])
    p4 = " | ".join(subjects["p4"]["problems"])
    assert "2026-01-21" in p4 and "not analysed" in p4
    assert any("belong to no study" in n for n in summary["longitudinal"]["notes"])
    assert subjects["p1"]["problems"] == []


def test_tracks_follow_each_trigger_point_across_visits(study):
    _, out = study
    rows = [r for r in _rows(out / "tracks.csv") if r["subject_id"] == "p1"]
    # Baseline frame = world - 5 mm. A, B and C each keep one track id over every visit.
    a, b, c = _near(rows, A[0] - 5.0), _near(rows, B[0] - 5.0), _near(rows, C[0] - 5.0)
    assert [r["status"] for r in a] == ["new", "persisting", "persisting"]
    assert len({r["track_id"] for r in a}) == 1
    assert [(r["visit"], r["status"]) for r in b] == [
        ("2026-01-10", "new"), ("2026-01-24", "persisting"), ("2026-02-21", "resolved"),
    ]  # fmt: skip
    assert [(r["visit"], r["status"]) for r in c] == [("2026-02-21", "new")]
    assert len({a[0]["track_id"], b[0]["track_id"], c[0]["track_id"]}) == 3
    assert [r["days_since_first"] for r in a] == ["0.000", "14.000", "42.000"]
    assert [r["days_since_injection"] for r in a] == ["", "14.000", "42.000"]
    assert all(r["flagged"] == "no" for r in rows)
    # The visit frame's own positions are reported too: at visit 2 the probe sat 1.5 mm further along.
    assert float(a[1]["x_mm"]) == pytest.approx(A[0] - 6.5, abs=0.3)


def test_changes_carry_the_measured_softening_with_its_uncertainty(study):
    _, out = study
    changes = [r for r in _rows(out / "changes.csv") if r["subject_id"] == "p1"]
    tracks = _rows(out / "tracks.csv")
    a_id = _near([r for r in tracks if r["subject_id"] == "p1"], A[0] - 5.0)[0]["track_id"]
    a = {r["visit"]: r for r in changes if r["track_id"] == a_id}
    assert float(a["2026-02-21"]["delta_stiffness_kpa_mean"]) == pytest.approx(35.0 - 50.0, abs=2.0)
    assert float(a["2026-02-21"]["delta_stiffness_kpa_max"]) == pytest.approx(35.0 - 50.0, abs=2.0)
    assert float(a["2026-02-21"]["delta_area_mm2"]) < 0  # r 1.5 -> 1.2 mm
    assert float(a["2026-02-21"]["delta_area_mm2_sd"]) > 0
    assert a["2026-02-21"]["reference_visit"] == "2026-01-10"


def test_registration_recovers_the_probe_shift(study):
    _, out = study
    visits = {(r["subject_id"], r["visit"]): r for r in _rows(out / "visits.csv")}
    assert float(visits[("p1", "2026-01-24")]["lateral_shift_mm"]) == pytest.approx(1.5, abs=0.4)
    assert float(visits[("p1", "2026-02-21")]["lateral_shift_mm"]) == pytest.approx(-1.0, abs=0.4)
    assert visits[("p1", "2026-01-24")]["registration_reliable"] == "yes"
    assert visits[("p3", "2026-01-19")]["tracked"] == "no"
    assert "missing" in visits[("p3", "2026-03-02")]["problem"]  # the listed visit without a file has its row
    assert "1 ml lidocaine" in visits[("p1", "2026-01-10")]["events"]


def test_patient_pages_are_written_and_linked(study):
    _, out = study
    report = (out / "report.html").read_text(encoding="utf-8")
    for subject in ("p1", "p2", "p3", "p4"):
        page = out / "patients" / f"{subject}.html"
        assert page.is_file()
        assert f'href="patients/{subject}.html"' in report
    p1 = (out / "patients" / "p1.html").read_text(encoding="utf-8")
    assert p1.count("data:image/png;base64,") >= 3  # the trend plot, the baseline and latest pictures


def test_dicom_visits_come_from_patient_id_and_study_date_and_register_inside_their_region(tmp_path):
    """Real DICOM files (pydicom): each a scanner frame with a margin of screen around the ultrasound region;
    PatientID and StudyDate name the patient and the visit, and positions are registered inside the region."""
    import pydicom

    from dicom_files import write_us_dicom

    folder = tmp_path / "export"
    folder.mkdir()
    margin_x, margin_y = 30, 20
    for name, date, probe_x in (("base.dcm", "20260110", 5.0), ("follow.dcm", "20260207", 6.5)):
        bmode, _ = scene_frame(probe_x, [(*A, 1.4, 50.0)])
        screen = np.zeros((bmode.shape[0] + 2 * margin_y, bmode.shape[1] + 2 * margin_x), np.uint8)
        screen[5:12, 5:60] = 255  # burnt-in text outside the region
        screen[margin_y : margin_y + bmode.shape[0], margin_x : margin_x + bmode.shape[1]] = np.round(
            bmode * 255
        )
        region = (margin_x, margin_y, margin_x + bmode.shape[1], margin_y + bmode.shape[0])
        path = write_us_dicom(
            folder / name, rows=screen.shape[0], columns=screen.shape[1], pixels=screen[None], region=region,
            delta_cm=(SPACING_MM / 10, SPACING_MM / 10),
        )  # fmt: skip
        ds = pydicom.dcmread(path)
        ds.PatientID, ds.StudyDate = "PAT-0042", date
        ds.save_as(path)
    out = tmp_path / "out"
    model = make_model_file(tmp_path / "model")
    assert main(["--model", str(model), "--input", str(folder), "--output", str(out), "--longitudinal"]) == 0
    rows = _rows(out / "tracks.csv")
    assert [(r["subject_id"], r["visit"], r["status"]) for r in rows] == [
        ("PAT-0042", "2026-01-10", "new"), ("PAT-0042", "2026-02-07", "persisting"),
    ]  # fmt: skip
    assert float(rows[1]["days_since_first"]) == 28.0
    # In the region's frame the baseline sees A at world 12 - 5 mm; the CSV's x_mm is the whole frame's.
    assert float(rows[1]["x_baseline_mm"]) == pytest.approx(A[0] - 5.0, abs=0.3)
    assert float(rows[1]["x_mm"]) == pytest.approx(A[0] - 6.5 + margin_x * SPACING_MM, abs=0.3)
    visits = _rows(out / "visits.csv")
    assert float(visits[1]["lateral_shift_mm"]) == pytest.approx(1.5, abs=0.4)


def test_resume_refuses_a_changed_grouping_of_frames(study, tmp_path, monkeypatch, capsys):
    """Who and which visit each frame is belongs to the run: resuming without --longitudinal, or after study.csv
    was edited, would track two groupings as one; the resume is refused, naming what changed."""
    import shutil

    from tpnet.inference import longitudinal_run

    folder = shutil.copytree(study_inputs["folder"], tmp_path / "study")
    out = tmp_path / "out"
    args = ["--model", str(study_inputs["model"]), "--input", str(folder), "--output", str(out)]

    def die(*_args, **_kwargs):
        raise MemoryError("killed while tracking")

    with monkeypatch.context() as patch:
        patch.setattr(longitudinal_run, "track_study", die)
        with pytest.raises(MemoryError):
            main([*args, "--longitudinal"])
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    assert "longitudinal: was True, now False" in capsys.readouterr().err
    with (folder / "study.csv").open("a", encoding="utf-8") as table:
        table.write("p4_v3,p4,2026-02-04,,\n")
    assert main([*args, "--longitudinal", "--resume"]) == 2
    assert "study_table" in capsys.readouterr().err
    assert not (out / "tracks.csv").exists()


def test_a_run_that_dies_while_tracking_resumes_to_the_same_results(study, tmp_path, monkeypatch):
    """Every frame is journalled before tracking starts: a crash there leaves the run resumable, and --resume
    redoes only the tracking (no frame twice), ending with the uninterrupted run's tables."""
    from tpnet.inference import longitudinal_run

    _, straight = study
    args = ["--model", str(study_inputs["model"]), "--input", str(study_inputs["folder"]), "--output"]
    out = tmp_path / "out"

    def die(*_args, **_kwargs):
        raise MemoryError("killed while tracking")

    with monkeypatch.context() as patch:
        patch.setattr(longitudinal_run, "track_study", die)
        with pytest.raises(MemoryError):
            main([*args, str(out), "--longitudinal"])
    assert json.loads((out / "summary.json").read_text())["complete"] is False
    assert not (out / "tracks.csv").exists()
    assert main([*args, str(out), "--longitudinal", "--resume"]) == 3
    for name in ("tracks.csv", "changes.csv", "visits.csv", "detections.csv"):
        assert (out / name).read_text() == (straight / name).read_text(), name
    assert sorted(p.name for p in (out / "patients").iterdir()) == [
        "p1.html",
        "p2.html",
        "p3.html",
        "p4.html",
    ]
