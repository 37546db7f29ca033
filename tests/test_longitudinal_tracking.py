"""scripts/longitudinal_tracking.py's own steps (no training): the tracking input holds only the scored subjects'
frames, without labels, inside its own root; and the detector's recall is split by the TrPs' response."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tpnet.core.contract import load_manifest, resolve_path
from tpnet.data.synth_longitudinal import write_longitudinal_dataset

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "longitudinal_tracking.py"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("longitudinal_tracking", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and the like look their module up by name
    spec.loader.exec_module(module)
    return module


def test_tracking_input_holds_only_the_chosen_subjects_without_masks(script, tmp_path: Path) -> None:
    data = write_longitudinal_dataset(tmp_path / "data", subjects=3, height=64, width=64, workers=1)
    all_rows = load_manifest(data)
    target = tmp_path / "test_data"

    n_frames = script.write_tracking_input(data, target, ["s001"])

    rows = load_manifest(target)
    assert n_frames == len(rows) == sum(row.subject_id == "s001" for row in all_rows) >= 1
    assert {row.subject_id for row in rows} == {"s001"}
    assert all(row.mask is None for row in rows)  # the tracker sees no label
    with (target / "manifest.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert "visit" in header and "event" in header and "mask" not in header
    for row in rows:  # inside the new root, the same bytes as the original frames
        copied, original = resolve_path(target, row.bmode), resolve_path(data, row.bmode)
        assert copied.read_bytes() == original.read_bytes()
    assert (target / "dataset.yaml").read_text() == (data / "dataset.yaml").read_text()
    assert not (target / "masks").exists() and not target.with_name("test_data.partial").exists()


def test_recall_is_split_into_baseline_and_responding_or_not_follow_ups(script, tmp_path: Path) -> None:
    truth, detections = tmp_path / "tracks.csv", tmp_path / "detections.csv"
    columns = ("subject_id", "sample_id", "visit_index", "track_id", "status", "x_mm", "y_mm", "softening")
    truth_rows = [
        ("a", "a_v0", "0", "1", "new", "10", "10", "0"),  # found
        ("a", "a_v1", "1", "1", "persisting", "12", "10", "0.4"),  # responded, missed (detection 6 mm away)
        ("a", "a_v1", "1", "2", "new", "30", "12", "0"),  # new at follow-up, found
        ("a", "a_v2", "2", "1", "resolved", "", "", "0.4"),  # gone: not counted
        ("b", "b_v0", "0", "1", "new", "5", "5", "0"),  # not a scored subject
    ]
    with truth.open("w", newline="") as fh:
        csv.writer(fh).writerows([columns, *truth_rows])
    with detections.open("w", newline="") as fh:
        csv.writer(fh).writerows([
            ("stem", "x_mm", "y_mm"), ("a_v0", "10.5", "10"), ("a_v1", "18", "10"), ("a_v1", "30", "13"),
            ("a_v2", "", ""), ("b_v0", "5", "5"),
        ])  # fmt: skip

    counts = script.recall_by_response(truth, detections, ["a"], match_mm=5.0)
    # the new TrP at a_v1 (track 2) outside that visit's SWE box: counted there, not as a non-responder
    boxed = script.recall_by_response(truth, detections, ["a"], match_mm=5.0, outside={("a_v1", "2")})

    assert counts == {"baseline": [1, 1], "follow-up, no response": [1, 1], "follow-up, responded": [0, 1],
                      "outside the SWE box (any visit)": [0, 0]}  # fmt: skip
    assert boxed == {"baseline": [1, 1], "follow-up, no response": [0, 0], "follow-up, responded": [0, 1],
                     "outside the SWE box (any visit)": [1, 1]}  # fmt: skip


def test_a_trp_outside_its_visit_swe_box_is_named(script, tmp_path: Path) -> None:
    (tmp_path / "truth").mkdir()
    box = {"left": 10.0, "top": 2.0, "width": 15.0, "height": 18.0}  # x 10-25 mm, depth 2-20 mm
    tracks = [
        {"track_id": 1, "status": "persisting", "x_mm": 12.0, "y_mm": 9.0},  # inside
        {"track_id": 2, "status": "persisting", "x_mm": 28.4, "y_mm": 9.0},  # right of the box
        {"track_id": 3, "status": "new", "x_mm": 20.0, "y_mm": 21.0},  # below it
        {"track_id": 4, "status": "resolved", "x_mm": None, "y_mm": None},  # gone: nothing to see
    ]
    for subject in ("a", "b"):
        truth = {"sample_id": f"{subject}_v1", "subject_id": subject, "swe_box_mm": box, "tracks": tracks}
        (tmp_path / "truth" / f"{subject}_v1.json").write_text(json.dumps(truth))

    assert script.outside_swe_box(tmp_path, ["a"]) == {("a_v1", "2"), ("a_v1", "3")}
    assert script.outside_swe_box(tmp_path, []) == set()
