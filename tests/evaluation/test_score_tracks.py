"""python -m tpnet.evaluation.score_tracks: tracks.csv (the tool's columns) against a synthetic study's truth."""

from __future__ import annotations

import csv
import json

import pytest

from tpnet.evaluation.score_tracks import main
from tpnet.inference.longitudinal_run import TRACK_COLUMNS

TRUTH = (
    "subject_id,sample_id,visit,track_id,status,x_mm,y_mm,area_mm2,stiffness_kpa_mean,stiffness_kpa_max\n"
    "s1,s1_v0,2026-01-01,1,new,10,5,16,50,60\n"
    "s1,s1_v0,2026-01-01,2,new,20,8,12,40,45\n"
    "s1,s1_v1,2026-01-15,1,persisting,11,5,12,40,48\n"
    "s1,s1_v1,2026-01-15,2,resolved,,,,,\n"
    "s2,s2_v0,2026-01-03,1,new,15,6,16,45,50\n"
    "s2,s2_v1,2026-01-20,1,persisting,14,6,16,44,49\n"
)


def _tracks(path, rows):
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRACK_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in TRACK_COLUMNS})


def _predicted(kpa_error=0.0, relink=False):
    return [
        dict(subject_id="s1", track_id=1, visit="2026-01-01", status="new", x_mm=10.2, y_mm=5,
             area_mm2=16, stiffness_kpa_mean=50, stiffness_kpa_max=60),
        dict(subject_id="s1", track_id=2, visit="2026-01-01", status="new", x_mm=20, y_mm=8, area_mm2=12,
             stiffness_kpa_mean=40, stiffness_kpa_max=45),
        dict(subject_id="s1", track_id=3 if relink else 1, visit="2026-01-15", status="new" if relink else
             "persisting", x_mm=11, y_mm=5.2, area_mm2=12, stiffness_kpa_mean=40 + kpa_error,
             stiffness_kpa_max=48),
        dict(subject_id="s1", track_id=2, visit="2026-01-15", status="resolved"),
        dict(subject_id="s2", track_id=1, visit="2026-01-03", status="new", x_mm=15, y_mm=6, area_mm2=16,
             stiffness_kpa_mean=45, stiffness_kpa_max=50),
        dict(subject_id="s2", track_id=1, visit="2026-01-20", status="persisting", x_mm=14, y_mm=6, area_mm2=16,
             stiffness_kpa_mean=44, stiffness_kpa_max=49),
    ]  # fmt: skip


@pytest.fixture
def truth(tmp_path):
    path = tmp_path / "truth.csv"
    path.write_text(TRUTH, encoding="utf-8")
    return path


def test_perfect_tracks_score_one_and_the_change_error_is_measured(tmp_path, truth, capsys):
    _tracks(tmp_path / "tracks.csv", _predicted(kpa_error=3.0))
    out = tmp_path / "m.json"
    assert main(["--truth", str(truth), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["track_accuracy"] == 1.0 and metrics["n_true_pairs"] == 2
    assert metrics["resolved_accuracy"] == 1.0
    # s1's change is off by 3 kPa, s2's exact: the median of |3| and |0|.
    assert metrics["mae_stiffness_mean_kpa"] == pytest.approx(1.5)
    assert "track-matching accuracy: 1.000" in capsys.readouterr().out


def test_a_broken_link_lowers_the_accuracy_and_subjects_can_be_chosen(tmp_path, truth):
    _tracks(tmp_path / "tracks.csv", _predicted(relink=True))
    out = tmp_path / "m.json"
    args = ["--truth", str(truth), "--tracks", str(tmp_path / "tracks.csv"), "--out", str(out)]
    assert main(args) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert (metrics["track_accuracy"], metrics["pair_detection_rate"], metrics["linking_accuracy"]) == (
        0.5,
        1.0,
        0.5,
    )
    assert main([*args, "--subjects", "s2"]) == 0
    assert json.loads(out.read_text())["metrics"]["track_accuracy"] == 1.0
    assert main([*args, "--subjects", "s9"]) == 2  # not in the truth: named, not silently empty
