"""Which subject and visit each input frame is (issue #18): study.csv on a plain folder, the manifest's visit
columns on a contract dataset, DICOM PatientID + StudyDate; and the visit labels they may hold."""

from __future__ import annotations

import csv
import warnings

import numpy as np
import pydicom
import pytest

from dicom_files import write_us_dicom
from tpnet.core.dicom import read_dicom_header
from tpnet.core.io import write_png, write_tiff
from tpnet.data.synth_longitudinal import write_longitudinal_dataset
from tpnet.data.synth_sweeps import _write_nifti
from tpnet.inference.inputs import InputError, InputWarning, discover_inputs
from tpnet.inference.study import VisitInfo, apply_study_table, parse_visit_label

SPACING_MM = 0.2
HEADER = "stem,subject_id,visit,event,event_date,event_notes\n"


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, np.full((32, 32), value, np.uint8))


def _dicom(path, frames=1, patient_id=None, study_date=None):
    write_us_dicom(path, frames=frames, rows=32, columns=32, pixel_spacing_mm=SPACING_MM)
    if patient_id is not None or study_date is not None:
        ds = pydicom.dcmread(path)
        if patient_id is not None:
            ds.PatientID = patient_id
        if study_date is not None:
            ds.StudyDate = study_date
        ds.save_as(path)
    return path


def _discover(folder, patient_ids=True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputWarning)  # tiny frames: field-of-view warnings are not the point
        return discover_inputs(
            folder, spacing_mm_cli=SPACING_MM, model_spacing_mm=SPACING_MM, patient_ids=patient_ids
        )


def _by_stem(frames):
    return {f.stem: f for f in frames}


def _study_folder(tmp_path):
    """a.png, nested sub/b.png (stem sub__b), a pair x_bmode.png + x_elasto.tif, a 3-frame cine loop and a
    3-slice sweep."""
    _png(tmp_path / "a.png")
    _png(tmp_path / "sub" / "b.png")
    _png(tmp_path / "x_bmode.png")
    write_tiff(tmp_path / "x_elasto.tif", np.full((32, 32), 20.0, np.float32))
    _dicom(tmp_path / "loop.dcm", frames=3)
    _write_nifti(tmp_path / "sweep.nii", np.full((3, 32, 32), 90, np.uint8), SPACING_MM, 0.5)
    return tmp_path


# ---------------------------------------------------------------------------------------- visit labels


@pytest.mark.parametrize(
    ("text", "label"),
    [("2026-01-23", "2026-01-23"), ("20260123", "2026-01-23"), (" 2026.01.23 ", "2026-01-23"),
     ("2024-02-29", "2024-02-29"), ("1", "1"), ("2.0", "2"), ("02", "2"), ("0", "0")],
)  # fmt: skip
def test_visit_labels_are_normalised(text, label):
    assert parse_visit_label(text) == label


@pytest.mark.parametrize(
    "text", ["2026-02-30", "20261301", "2025-02-29", "baseline", "2.5", "-1", "", "2026-01-23T10:00", "1e1"]
)
def test_visit_labels_that_are_neither_a_date_nor_an_ordinal_are_refused_by_name(text):
    with pytest.raises(ValueError) as caught:
        parse_visit_label(text)
    assert (repr(text.strip()) in str(caught.value)) if text else "empty" in str(caught.value)


# ------------------------------------------------------------------------------------------- study.csv


def test_study_csv_names_frames_by_stem_path_loop_pair_and_sweep(tmp_path):
    folder = _study_folder(tmp_path)
    (folder / "study.csv").write_text(
        HEADER
        + "a,s001,2026-01-23,Injection,,lidocaine 1% 2 ml\n"
        + "sub/b.png,s001,2026-02-27,,,\n"  # the file's path below the folder, suffix and all
        + "x,s002,1,injection,2026-01-25,\n"  # the pair's stem; an ordinal visit, the event two days later
        + "loop,s002,2,,,\n"  # a cine loop's stem: every frame of it
        + "sweep,s003,20260301,,,\n"
    )
    frames, rejected = _discover(folder)
    updated, study_rejected = apply_study_table(folder, frames)

    assert not rejected and not study_rejected
    assert [f.stem for f in updated] == [f.stem for f in frames]  # order and frames kept
    by_stem = _by_stem(updated)
    assert by_stem["a"].subject_id == "s001"
    assert by_stem["a"].visit == VisitInfo("2026-01-23", "injection", "", "lidocaine 1% 2 ml", "study.csv")
    assert by_stem["sub__b"].visit == VisitInfo("2026-02-27", source="study.csv")
    assert by_stem["x"].visit == VisitInfo("1", "injection", "2026-01-25", "", "study.csv")
    loop = [f for f in updated if f.loop == "loop"]
    assert len(loop) == 3 and {(f.subject_id, f.visit.visit) for f in loop} == {("s002", "2")}
    sweep = [f for f in updated if f.sweep == "sweep"]
    assert len(sweep) == 3 and {(f.subject_id, f.visit.visit) for f in sweep} == {("s003", "2026-03-01")}


def test_nested_frames_are_named_by_path_or_stem_without_suffix(tmp_path):
    _png(tmp_path / "p1" / "scan.png")
    _png(tmp_path / "p2" / "scan.png")
    (tmp_path / "study.csv").write_text("stem,subject_id,visit\np1/scan,s1,1\np2__scan,s2,1\n")
    frames, _ = _discover(tmp_path)
    updated, rejected = apply_study_table(tmp_path, frames)
    assert not rejected
    assert {f.stem: f.subject_id for f in updated} == {"p1__scan": "s1", "p2__scan": "s2"}


def test_each_line_that_cannot_be_applied_is_named_with_its_reason(tmp_path):
    _png(tmp_path / "v1.png")
    _png(tmp_path / "v2.png")
    _png(tmp_path / "v3.png")
    _png(tmp_path / "v4.png")
    (tmp_path / "study.csv").write_text(
        "stem,subject_id,visit\n"
        "v1,s003,2026-01-23\n"  # line 2: applied
        "v9,s003,2026-02-27\n"  # line 3: the visit's frame is missing
        "v2,s003,2026-02-30\n"  # line 4: no such date
        "v3,,2026-03-03\n"  # line 5: no subject
        "v1.png,s004,2026-04-04\n"  # line 6: v1 a second time, spelt as its file name
        "\n"  # a blank line: skipped, not counted as a rejection
        "v4,s003,3\n"  # line 8: applied
    )
    frames, _ = _discover(tmp_path)
    updated, rejected = apply_study_table(tmp_path, frames)

    reasons = {r.name: r.reason for r in rejected}
    assert set(reasons) == {f"study.csv line {n}" for n in ("3 (v9)", "4 (v2)", "5 (v3)", "6 (v1.png)")}
    assert reasons["study.csv line 3 (v9)"] == (
        "listed for subject s003, visit 2026-02-27, but no such frame in the input folder"
    )
    assert (
        "'2026-02-30'" in reasons["study.csv line 4 (v2)"]
        and "not a real date" in reasons["study.csv line 4 (v2)"]
    )
    assert "subject_id" in reasons["study.csv line 5 (v3)"]
    assert (
        "second line" in reasons["study.csv line 6 (v1.png)"]
        and "line 2" in reasons["study.csv line 6 (v1.png)"]
    )
    by_stem = _by_stem(updated)
    assert (by_stem["v1"].subject_id, by_stem["v1"].visit.visit) == ("s003", "2026-01-23")  # the first line's
    assert (by_stem["v4"].subject_id, by_stem["v4"].visit.visit) == ("s003", "3")
    assert by_stem["v2"].visit is None and by_stem["v3"].subject_id is None  # rejected lines change nothing


def test_a_bad_event_date_rejects_its_line(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "study.csv").write_text(HEADER + "a,s1,1,injection,2,\n")  # an ordinal is no event date
    frames, _ = _discover(tmp_path)
    updated, rejected = apply_study_table(tmp_path, frames)
    assert [r.name for r in rejected] == ["study.csv line 2 (a)"]
    assert "event_date '2'" in rejected[0].reason
    assert updated[0].visit is None


def test_bom_and_header_case_and_spaces_are_accepted(tmp_path):
    _png(tmp_path / "a.png")
    (tmp_path / "study.csv").write_bytes(
        "\ufeff Stem ,SUBJECT_ID, Visit ,Event\r\na,s1,2026-01-23,INJECTION\r\n".encode()
    )
    frames, _ = _discover(tmp_path)
    updated, rejected = apply_study_table(tmp_path, frames)
    assert not rejected
    assert updated[0].subject_id == "s1"
    assert updated[0].visit == VisitInfo("2026-01-23", "injection", source="study.csv")


def test_a_study_csv_without_its_columns_or_unreadable_is_an_input_error(tmp_path):
    _png(tmp_path / "a.png")
    frames, _ = _discover(tmp_path)
    (tmp_path / "study.csv").write_text("file,patient,visit\na.png,s1,1\n")
    with pytest.raises(InputError) as caught:
        apply_study_table(tmp_path, frames)
    message = str(caught.value)
    assert str(tmp_path / "study.csv") in message and "stem" in message and "subject_id" in message
    assert "missing column(s) stem, subject_id " in message

    (tmp_path / "study.csv").write_bytes(b"stem,subject_id,visit\na,s\xe9,1\n")  # Latin-1, not UTF-8
    with pytest.raises(InputError, match="unreadable"):
        apply_study_table(tmp_path, frames)


def test_without_a_study_csv_frames_are_unchanged(tmp_path):
    _png(tmp_path / "a.png")
    frames, _ = _discover(tmp_path)
    assert apply_study_table(tmp_path, frames) == (frames, [])


def test_study_csv_overrides_dicom_patient_and_date(tmp_path):
    _dicom(tmp_path / "still.dcm", patient_id="PAT-7", study_date="20260105")
    (tmp_path / "study.csv").write_text("stem,subject_id,visit\nstill,s007,2\n")
    frames, _ = _discover(tmp_path)
    assert (frames[0].subject_id, frames[0].visit) == ("PAT-7", VisitInfo("2026-01-05", source="dicom"))
    updated, _ = apply_study_table(tmp_path, frames)
    assert (updated[0].subject_id, updated[0].visit) == ("s007", VisitInfo("2", source="study.csv"))


def test_a_plain_run_never_carries_the_patient_id(tmp_path):
    """PatientID is an identity: only a longitudinal run (patient_ids=True) reads it into the results."""
    _dicom(tmp_path / "still.dcm", patient_id="PAT-7", study_date="20260105")
    frames, _ = _discover(tmp_path, patient_ids=False)
    assert (frames[0].subject_id, frames[0].visit) == (None, None)
    root = tmp_path / "ds"
    (root / "bmode").mkdir(parents=True)
    _dicom(root / "bmode" / "a.dcm", patient_id="PAT-1", study_date="20260110")
    (root / "dataset.yaml").write_text("name: t\nclasses: [background, active_trp]\nelasto_unit: kPa\n")
    (root / "manifest.csv").write_text("sample_id,subject_id,bmode,visit\na,s1,bmode/a.dcm,\n")
    frames, _ = _discover(root, patient_ids=False)
    assert (frames[0].subject_id, frames[0].visit) == ("s1", None)  # the manifest's pseudonym stays


# ------------------------------------------------------------------------------------ contract dataset


def _rewrite_manifest(root, edit):
    path = root / "manifest.csv"
    with path.open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows = edit(rows)
    with path.open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_manifest_visit_columns_give_each_row_its_visit(tmp_path):
    root = write_longitudinal_dataset(tmp_path / "study", subjects=2, height=64, width=64, workers=1)

    def edit(rows):
        for row in rows:
            row["event_date"] = row["event_notes"] = ""
        rows[0]["event_notes"] = "2 ml lidocaine"
        rows[1]["visit"] = "week 5"  # not a date, not an ordinal
        return rows

    _rewrite_manifest(root, edit)
    with (root / "manifest.csv").open(newline="") as stream:
        manifest = list(csv.DictReader(stream))
    frames, rejected = _discover(root)

    expected = (
        "manifest.csv column visit 'week 5' is neither an ISO date (YYYY-MM-DD, or DICOM's YYYYMMDD) nor an "
        "ordinal (1, 2, ...)"
    )
    assert [(r.name, r.reason) for r in rejected] == [(manifest[1]["sample_id"], expected)]
    by_stem = _by_stem(frames)
    assert len(frames) == len(manifest) - 1
    first = by_stem[manifest[0]["sample_id"]]
    assert first.subject_id == manifest[0]["subject_id"]
    assert first.visit == VisitInfo(manifest[0]["visit"], "injection", "", "2 ml lidocaine", "manifest")
    for row in manifest[2:]:
        visit = by_stem[row["sample_id"]].visit
        assert (visit.visit, visit.event, visit.source) == (row["visit"], row["event"], "manifest")


def test_tpnet_data_check_accepts_the_visit_columns(tmp_path):
    from tpnet.data.cli import main

    root = write_longitudinal_dataset(tmp_path / "study", subjects=2, height=64, width=64, workers=1)
    _rewrite_manifest(root, lambda rows: [{**r, "event_date": "", "event_notes": "dose 1 ml"} for r in rows])
    assert main(["check", str(root)]) == 0


def test_a_dicom_row_takes_the_manifest_subject_and_the_file_date(tmp_path):
    root = tmp_path / "ds"
    (root / "bmode").mkdir(parents=True)
    _dicom(root / "bmode" / "a.dcm", patient_id="PAT-1", study_date="20260110")
    _dicom(root / "bmode" / "b.dcm", patient_id="PAT-1", study_date="20260110")
    (root / "dataset.yaml").write_text("name: t\nclasses: [background, active_trp]\nelasto_unit: kPa\n")
    (root / "manifest.csv").write_text(
        "sample_id,subject_id,bmode,visit\na,s1,bmode/a.dcm,\nb,s1,bmode/b.dcm,3\n"
    )
    frames, rejected = _discover(root)
    assert not rejected
    by_stem = _by_stem(frames)
    assert (by_stem["a"].subject_id, by_stem["a"].visit) == ("s1", VisitInfo("2026-01-10", source="dicom"))
    assert (by_stem["b"].subject_id, by_stem["b"].visit) == ("s1", VisitInfo("3", source="manifest"))


# ---------------------------------------------------------------------------------------------- DICOM


def test_dicom_header_reads_patient_id_and_study_date_stripped(tmp_path):
    header = read_dicom_header(_dicom(tmp_path / "a.dcm", patient_id=" PAT 1 ", study_date="20260123"))
    assert (header.patient_id, header.study_date) == ("PAT 1", "20260123")
    bare = read_dicom_header(_dicom(tmp_path / "b.dcm"))
    assert (bare.patient_id, bare.study_date) == ("", "")


def test_dicom_frames_get_subject_and_visit_from_the_file(tmp_path):
    _dicom(tmp_path / "loop.dcm", frames=2, patient_id="PAT-1", study_date="20260123")
    _dicom(tmp_path / "no_date.dcm", patient_id="PAT-2")
    with pytest.warns(UserWarning, match="VR DA"):  # pydicom warns on writing it, never on reading it
        _dicom(tmp_path / "bad_date.dcm", patient_id="PAT-3", study_date="2026")  # a year: no visit 2026
    frames, rejected = _discover(tmp_path)

    assert not rejected  # a study date is never a reason to reject a frame
    loop = [f for f in frames if f.loop == "loop"]
    assert len(loop) == 2
    assert {(f.subject_id, f.visit) for f in loop} == {("PAT-1", VisitInfo("2026-01-23", source="dicom"))}
    by_stem = _by_stem(frames)
    assert (by_stem["no_date"].subject_id, by_stem["no_date"].visit) == (None, None)
    assert (by_stem["bad_date"].subject_id, by_stem["bad_date"].visit) == ("PAT-3", None)
