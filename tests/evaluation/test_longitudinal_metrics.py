"""The longitudinal scorer (issue #18) on hand-made tracks: link accuracy, change errors, resolutions, the
subject bootstrap and the truth file reader."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from tpnet.core.longitudinal import Detection, Registration, TrackRow, Visit, build_tracks
from tpnet.data.synth_longitudinal import TRACK_COLUMNS
from tpnet.evaluation.longitudinal_metrics import (
    TruthTrackRow,
    aggregate,
    bootstrap_ci,
    evaluate_tracks,
    read_truth_tracks,
    score_subjects,
    visit_order,
)

# Three true TrPs of one subject, at a baseline and a follow-up (visit frame positions), softening and shrinking.
BASE = {"a": (5.0, 5.0), "b": (15.0, 5.0), "c": (25.0, 8.0)}


def _truth(subject="s1", resolve_c=False):
    rows = []
    for track, (x, y) in BASE.items():
        rows.append(
            TruthTrackRow(
                subject,
                "1",
                track,
                "new",
                x_mm=x,
                y_mm=y,
                area_mm2=10.0,
                stiffness_kpa_mean=40.0,
                stiffness_kpa_max=60.0,
            )
        )
        if track == "c" and resolve_c:
            rows.append(TruthTrackRow(subject, "2", track, "resolved"))
            continue
        # The probe moved 2 mm: every TrP sits 2 mm to the left in the follow-up frame.
        rows.append(
            TruthTrackRow(
                subject,
                "2",
                track,
                "persisting",
                x_mm=x - 2.0,
                y_mm=y,
                area_mm2=7.0,
                stiffness_kpa_mean=32.0,
                stiffness_kpa_max=50.0,
            )
        )
    return rows


def _pred(subject, visit, track_id, x, y, kpa=40.0, kpa_max=60.0, area=10.0, status="persisting"):
    nan = math.nan
    return TrackRow(
        subject_id=subject,
        track_id=track_id,
        visit_id=visit,
        visit_index=int(visit) - 1,
        days_since_first=0.0,
        days_since_injection=None,
        status=status,
        x_base_mm=x,
        y_base_mm=y,
        x_mm=x,
        y_mm=y,
        area_mm2=area,
        stiffness_kpa_mean=kpa,
        stiffness_kpa_max=kpa_max,
        stiffness_kpa_sd=nan,
        swe_coverage=nan,
        class_name="active_trp",
        confidence=nan,
        depth_from_skin_mm=nan,
        detection_index=0,
        match_distance_mm=nan,
        flagged=False,
        flag_reason="",
    )


def _perfect(subject="s1", ids=(1, 2, 3)):
    """Predictions equal to the truth, the tracks numbered ``ids`` at the follow-up."""
    rows = [_pred(subject, "1", i, x, y) for i, (x, y) in zip((1, 2, 3), BASE.values(), strict=True)]
    rows += [
        _pred(subject, "2", i, x - 2.0, y, kpa=32.0, kpa_max=50.0, area=7.0)
        for i, (x, y) in zip(ids, BASE.values(), strict=True)
    ]
    return rows


def test_perfect_predictions_score_one_and_no_error():
    metrics = aggregate(score_subjects(_perfect(), _truth()))
    assert metrics["track_accuracy"] == 1.0
    assert metrics["n_true_pairs"] == 3 and metrics["n_correct_pairs"] == 3
    assert metrics["mae_stiffness_mean_kpa"] == 0.0
    assert metrics["mae_stiffness_max_kpa"] == 0.0
    assert metrics["mae_area_mm2"] == 0.0
    assert math.isnan(metrics["resolved_accuracy"])  # no true resolution: nothing to measure


def test_a_swapped_pair_loses_exactly_its_two_links():
    # Tracks a and b exchange their predicted ids at the follow-up; c stays right.
    metrics = aggregate(score_subjects(_perfect(ids=(2, 1, 3)), _truth()))
    assert metrics["track_accuracy"] == pytest.approx(1 / 3)
    assert metrics["n_broken_pairs"] == 2 and metrics["n_missed_pairs"] == 0
    assert metrics["n_changes_stiffness_kpa_mean"] == 1  # changes are scored on correct links only


def test_a_missed_detection_is_a_wrong_pair():
    predicted = [p for p in _perfect() if not (p.visit_id == "2" and p.track_id == 3)]
    metrics = aggregate(score_subjects(predicted, _truth()))
    assert metrics["track_accuracy"] == pytest.approx(2 / 3)
    assert metrics["n_missed_pairs"] == 1


def test_change_errors_are_median_absolute_errors():
    predicted = _perfect()
    # Errors in the predicted follow-up stiffness of +1, -4 and +6 kPa: median absolute error 4.
    for row, error in zip(predicted[3:], (1.0, -4.0, 6.0), strict=True):
        row.stiffness_kpa_mean += error
        row.area_mm2 += error / 2
    metrics = aggregate(score_subjects(predicted, _truth()))
    assert metrics["track_accuracy"] == 1.0
    assert metrics["mae_stiffness_mean_kpa"] == pytest.approx(4.0)
    assert metrics["mae_area_mm2"] == pytest.approx(2.0)
    assert metrics["mae_stiffness_max_kpa"] == 0.0


def test_a_resolution_is_recognised_when_the_track_has_no_detection():
    truth = _truth(resolve_c=True)
    predicted = [p for p in _perfect() if not (p.visit_id == "2" and p.track_id == 3)]
    metrics = aggregate(score_subjects(predicted, truth))
    assert metrics["track_accuracy"] == 1.0 and metrics["n_true_pairs"] == 2
    assert metrics["resolved_accuracy"] == 1.0
    # Still detected where the truth resolved: not recognised.
    assert aggregate(score_subjects(_perfect(), truth))["resolved_accuracy"] == 0.0


def test_matching_uses_the_visit_frame_and_the_radius():
    predicted = _perfect()
    for row in predicted[3:]:
        row.x_mm += 6.0  # beyond the 5 mm radius in the visit frame: nothing matches at the follow-up
    assert aggregate(score_subjects(predicted, _truth()))["track_accuracy"] == 0.0
    assert aggregate(score_subjects(predicted, _truth(), match_mm=7.0))["track_accuracy"] == 1.0


def test_subject_bootstrap_brackets_the_point_estimate():
    truth, predicted = [], []
    for i in range(8):
        subject = f"s{i}"
        truth += _truth(subject)
        # Subjects 0-2 get a swapped pair (1/3 right), the others are perfect.
        predicted += _perfect(subject, ids=(2, 1, 3) if i < 3 else (1, 2, 3))
    result = evaluate_tracks(predicted, truth, n_boot=400, seed=1)
    point = result["metrics"]["track_accuracy"]
    assert point == pytest.approx((3 * 1 + 5 * 3) / 24)
    lo, hi = result["ci"]["track_accuracy"]
    assert lo < point < hi and lo >= 0.0 and hi <= 1.0
    assert result["metrics"]["n_subjects"] == 8
    assert all(math.isnan(v) for v in result["ci"]["resolved_accuracy"])  # no resolution anywhere


def test_bootstrap_of_the_change_error_and_its_checks():
    truth, predicted = [], []
    for i in range(8):
        truth += _truth(f"s{i}")
        rows = _perfect(f"s{i}")
        for row in rows[3:]:
            row.stiffness_kpa_mean += float(i)  # subject i's changes are off by i kPa
        predicted += rows
    scores = score_subjects(predicted, truth)
    point = aggregate(scores)["mae_stiffness_mean_kpa"]
    assert point == pytest.approx(3.5)  # the median of 0..7, each three times
    wide = bootstrap_ci(scores, n_boot=400, seed=2)["mae_stiffness_mean_kpa"]
    narrow = bootstrap_ci(scores, n_boot=400, seed=2, level=0.5)["mae_stiffness_mean_kpa"]
    assert wide[0] < narrow[0] <= point <= narrow[1] < wide[1]
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(scores, level=1.0)
    with pytest.raises(ValueError, match="no subjects"):
        bootstrap_ci([])


def test_a_subject_without_predictions_scores_zero():
    scores = score_subjects(_perfect("s1"), _truth("s1") + _truth("s2"))
    assert [s.subject_id for s in scores] == ["s1", "s2"]
    assert (scores[0].correct_pairs, scores[1].correct_pairs, scores[1].missed_pairs) == (3, 0, 3)


def test_present_truth_without_a_position_is_refused():
    truth = _truth()
    truth[0].x_mm = math.nan
    with pytest.raises(ValueError, match="subject 's1' at visit '1'.*no x_mm"):
        score_subjects(_perfect(), truth)


def test_core_tracks_score_perfectly_end_to_end():
    """build_tracks on the truth's detections (registered by the known 2 mm) links every pair right."""
    visits = [
        Visit("1", 0.0, [Detection(x, y, 10.0, 40.0, 60.0) for x, y in BASE.values()]),
        Visit(
            "2",
            30.0,
            [Detection(x - 2.0, y, 7.0, 32.0, 50.0) for x, y in BASE.values()][::-1],
            registration=replace(Registration.identity(), lateral_shift_mm=2.0),
        ),
    ]
    metrics = evaluate_tracks(build_tracks(visits, subject_id="s1"), _truth(), n_boot=50)["metrics"]
    assert metrics["track_accuracy"] == 1.0 and metrics["mae_stiffness_mean_kpa"] == 0.0


def test_visit_order():
    assert visit_order(["2", "10", "1", "2"]) == ["1", "2", "10"]
    assert visit_order(["2024-03-01", "2023-12-24"]) == ["2023-12-24", "2024-03-01"]
    assert visit_order(["baseline", "follow-up"]) == ["baseline", "follow-up"]


# ---- the truth file ----


def test_read_truth_tracks_with_every_column(tmp_path):
    path = tmp_path / "tracks.csv"
    path.write_text(
        "subject_id,sample_id,visit,track_id,status,x_mm,y_mm,x_base_mm,y_base_mm,area_mm2,"
        "stiffness_kpa_mean,stiffness_kpa_max,class,dx_mm,dz_mm,tilt_deg,extra\n"
        "s1,s1_v1,1,t1,new,5.0,6.0,5.0,6.0,10,40,60,active_trp,0,0,0,ignored\n"
        "s1,s1_v2,2,t1,resolved,,,,,,,,active_trp,2.5,-0.1,1.5,\n"
    )
    first, second = read_truth_tracks(path)
    assert (first.subject_id, first.visit, first.track_id, first.status) == ("s1", "1", "t1", "new")
    assert (first.x_mm, first.area_mm2, first.stiffness_kpa_max, first.class_name) == (
        5.0,
        10.0,
        60.0,
        "active_trp",
    )
    assert second.status == "resolved" and math.isnan(second.x_mm)
    assert (second.probe_dx_mm, second.probe_dz_mm, second.probe_tilt_deg) == (2.5, -0.1, 1.5)


def test_read_truth_tracks_reads_the_generators_columns(tmp_path):
    header = ",".join(TRACK_COLUMNS)
    values = {
        "subject_id": "s3", "sample_id": "s3_v2", "visit": "2", "visit_index": "1", "days_since_baseline": "28",
        "track_id": "2", "status": "persisting", "class": "latent_trp", "x_mm": "10.5", "y_mm": "12",
        "x_base_mm": "12.4", "y_base_mm": "12.2", "area_mm2": "6.5", "stiffness_kpa_mean": "31",
        "stiffness_kpa_max": "44", "softening": "0.3", "shrinkage": "0.2", "dx_mm": "1.9", "dz_mm": "0.4",
        "tilt_deg": "-0.8", "gain_db": "1.5",
    }  # fmt: skip
    values |= {"x_baseline_mm": values["x_base_mm"], "y_baseline_mm": values["y_base_mm"]}  # the older names
    path = tmp_path / "tracks.csv"
    path.write_text(header + "\n" + ",".join(values[c] for c in TRACK_COLUMNS) + "\n")
    (row,) = read_truth_tracks(path)
    assert (row.x_base_mm, row.y_base_mm, row.class_name) == (12.4, 12.2, "latent_trp")
    assert (row.probe_dx_mm, row.probe_dz_mm, row.probe_tilt_deg, row.probe_gain_db) == (1.9, 0.4, -0.8, 1.5)
    assert (row.days_since_baseline, row.softening, row.shrinkage) == (28.0, 0.3, 0.2)


def test_read_truth_tracks_without_optional_columns(tmp_path):
    path = tmp_path / "tracks.csv"
    path.write_text("subject_id,visit,track_id,status,x_mm,y_mm\ns1,1,t1,new,1,2\n")
    (row,) = read_truth_tracks(path)
    assert (row.x_mm, row.y_mm) == (1.0, 2.0) and math.isnan(row.stiffness_kpa_mean) and row.sample_id == ""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject_id,visit,status\ns1,1,new\n", r"missing required column\(s\) \['track_id'\]"),
        ("subject_id,visit,track_id,status,x_mm\ns1,1,t1,new,abc\n", r"line 2, column 'x_mm': not a number"),
        ("subject_id,visit,track_id,status\ns1,1,t1,gone\n", r"line 2: status 'gone'"),
        ("subject_id,visit,track_id,status\ns1,,t1,new\n", r"line 2: empty visit"),
    ],
)
def test_read_truth_tracks_names_the_file_and_the_problem(tmp_path, text, message):
    path = tmp_path / "tracks.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as err:
        read_truth_tracks(path)
    assert str(path) in str(err.value)


def test_read_truth_tracks_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="tracks.csv"):
        read_truth_tracks(tmp_path / "tracks.csv")
