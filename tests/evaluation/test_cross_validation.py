"""Out-of-fold records, the sweep summary and the comparison of configurations, on synthetic FrameRecords written
to real sweep folders (the layout tpnet-train -m cv.fold=... leaves)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tpnet.core.postprocess import TriggerPoint
from tpnet.evaluation.cross_validation import (
    OOF_FILE,
    CrossValidationError,
    compare_configurations,
    configurations,
    load_oof,
    oof_document,
    record_from_dict,
    record_to_dict,
    summarise_sweep,
    write_json,
    write_summary,
)
from tpnet.evaluation.metrics import aggregate, frame_record

CLASSES = ["background", "active_trp", "latent_trp", "vessel"]
SUBJECTS = [f"s{i}" for i in range(9)]
nan = math.nan


def point(x_mm: float, y_mm: float) -> TriggerPoint:
    return TriggerPoint(0, "active_trp", 1, x_mm * 10, y_mm * 10, x_mm, y_mm, 2.0, nan, 0.9, nan)


def synthetic_record(subject: str, frame: int, quality: float, rng: np.random.Generator):
    """One frame with one true TrP: found (at a small error) with probability ``quality``, plus the odd false one."""
    gt = np.zeros((8, 8), np.int64)
    gt[2:5, 2:5] = 1
    found = rng.random() < quality
    pred = gt.copy() if found else np.zeros_like(gt)
    pred_points = [point(3.0 + rng.random(), 3.0)] if found else []
    if rng.random() > quality:
        pred_points.append(point(20.0, 20.0))
    return frame_record(
        pred, gt, pred_points, [point(3.0, 3.0)], sample_id=f"{subject}_f{frame}", subject_id=subject,
        num_classes=len(CLASSES), frame_score=float(found),
    )  # fmt: skip


def write_synthetic_sweep(
    sweep: Path, quality: float = 0.7, folds: int = 3, seed: int = 0, skip_folds: tuple[int, ...] = (),
    plan_spacing: dict[int, float] | None = None,
) -> list:  # fmt: skip
    """A sweep folder like Hydra's: <sweep>/<n>/{.hydra/overrides.yaml, .hydra/config.yaml, plan.json,
    oof_records.json}; fold n predicts SUBJECTS[n::folds]. Returns every record written."""
    rng = np.random.default_rng(seed)
    written = []
    for fold in range(folds):
        run = sweep / str(fold)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text(f"- cv.fold={fold}\n- cv.folds={folds}\n")
        (run / ".hydra" / "config.yaml").write_text(f"cv:\n  fold: {fold}\n  folds: {folds}\n")
        spacing = (plan_spacing or {}).get(fold, 0.1)
        plan = {"values": {"spacing_mm": {"value": spacing, "source": "fingerprint", "why": "median"}}}
        (run / "plan.json").write_text(json.dumps(plan))
        if fold in skip_folds:
            continue  # crashed before its out-of-fold predictions
        records = [synthetic_record(s, f, quality, rng) for s in SUBJECTS[fold::folds] for f in range(3)]
        document = oof_document(
            records, CLASSES, fold=fold, folds=folds, checkpoint=str(run / "checkpoints/best.pt"),
            postprocess={"threshold": 0.5, "min_area_mm2": 2.0, "match_mm": 5.0, "min_mean_prob": 0.0},
            calibrated_on_these_subjects=True, non_test_subjects=SUBJECTS, overrides=[f"cv.fold={fold}"],
        )  # fmt: skip
        write_json(run / OOF_FILE, document)
        written += records
    return written


def same_metrics(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_frame_records_round_trip_through_json(tmp_path: Path):
    rng = np.random.default_rng(1)
    records = [synthetic_record(s, f, 0.5, rng) for s in SUBJECTS for f in range(2)]
    assert any(not r.loc_errors_mm for r in records)  # some frames without a match
    path = write_json(tmp_path / OOF_FILE, oof_document(
        records, CLASSES, fold=0, folds=3, checkpoint="best.pt", postprocess={"threshold": 0.5},
        calibrated_on_these_subjects=True, non_test_subjects=SUBJECTS,
    ))  # fmt: skip
    text = path.read_text()
    assert "NaN" not in text and "pickle" not in text  # strict JSON
    header, loaded = load_oof(path)
    assert header["calibrated_on_these_subjects"] is True and header["postprocess"] == {"threshold": 0.5}
    assert [r.sample_id for r in loaded] == [r.sample_id for r in records]
    assert loaded[0].tp_px.dtype.kind == "i" and isinstance(loaded[0].radii_mm, tuple)
    assert same_metrics(aggregate(loaded, CLASSES), aggregate(records, CLASSES))
    nan_score = record_to_dict(records[0]) | {"frame_score": None}
    assert math.isnan(record_from_dict(nan_score).frame_score)


def test_record_missing_a_field_is_an_error():
    raw = record_to_dict(synthetic_record("s0", 0, 1.0, np.random.default_rng(0)))
    del raw["tp_px"]
    with pytest.raises(ValueError, match="tp_px"):
        record_from_dict(raw)


def test_summary_pools_every_fold_and_checks_coverage(tmp_path: Path):
    records = write_synthetic_sweep(tmp_path / "sweep")
    summary = summarise_sweep(tmp_path / "sweep", n_boot=50)
    (config,) = summary["configurations"]
    pooled = config["pooled"]
    assert same_metrics({k: pooled[k] for k in aggregate(records, CLASSES)}, aggregate(records, CLASSES))
    assert pooled["n_subjects"] == len(SUBJECTS) and pooled["bootstrap"]["unit"] == "subject"
    lo, hi = pooled["ci95"]["det_f1"]
    assert lo <= pooled["det_f1"] <= hi
    assert config["complete"] and config["coverage"]["exactly_once"] and not config["missing_folds"]
    assert [row["fold"] for row in config["folds"]] == [0, 1, 2]
    assert any("mildly optimistic" in note for note in config["notes"])
    assert summary["plan"]["equal"] is True
    written = write_summary(tmp_path / "sweep", summary)
    assert [p.name for p in written] == ["cv_summary.json", "cv_summary.md", "plan.json"]
    assert "each exactly once" in (tmp_path / "sweep" / "cv_summary.md").read_text()


def test_missing_fold_is_reported_not_fatal(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "sweep", skip_folds=(1,))
    (config,) = summarise_sweep(tmp_path / "sweep", n_boot=20)["configurations"]
    assert config["missing_folds"] == [1] and not config["complete"]
    assert "crashed" in config["missing_why"]["1"]
    assert config["coverage"]["unpredicted_subjects"] == SUBJECTS[1::3]
    assert config["pooled"]["n_subjects"] == 6


def test_subject_predicted_by_two_folds_is_caught(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "sweep")
    path = tmp_path / "sweep" / "2" / OOF_FILE
    document = json.loads(path.read_text())
    document["records"][0]["subject_id"] = "s0"  # s0 is fold 0's
    document["subjects"] = sorted({*document["subjects"], "s0"})
    path.write_text(json.dumps(document))
    (config,) = summarise_sweep(tmp_path / "sweep", n_boot=20)["configurations"]
    assert config["coverage"]["duplicated_subjects"] == ["s0"] and not config["complete"]


def test_differing_plans_name_the_key_and_write_no_sweep_plan(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "sweep", plan_spacing={2: 0.12})
    summary = summarise_sweep(tmp_path / "sweep", n_boot=20)
    assert summary["plan"]["equal"] is False
    assert [d["key"] for d in summary["plan"]["differences"]] == ["values.spacing_mm.value"]
    write_summary(tmp_path / "sweep", summary)
    assert not (tmp_path / "sweep" / "plan.json").exists()


def test_a_sweep_without_folds_is_refused(tmp_path: Path):
    run = tmp_path / "lr_sweep" / "0" / ".hydra"
    run.mkdir(parents=True)
    (run / "overrides.yaml").write_text("- optim.lr=0.1\n")
    (run / "config.yaml").write_text("cv:\n  fold: null\n  folds: 5\n")
    with pytest.raises(CrossValidationError, match="no cross-validation fold"):
        summarise_sweep(tmp_path / "lr_sweep")


def test_compare_ranks_the_better_configuration_with_a_paired_bootstrap(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "good", quality=0.95, seed=1)
    write_synthetic_sweep(tmp_path / "bad", quality=0.3, seed=2)
    groups = configurations(tmp_path / "bad") + configurations(tmp_path / "good")
    result = compare_configurations(groups, n_boot=200)
    assert result["metric"] == "det_f1"  # TrP classes: detection F1 by default
    best, other = result["ranking"]
    assert best["name"] == str(tmp_path / "good") == result["best"]
    vs = other["vs_best"]
    assert vs["paired"] and vs["difference"] > 0 and vs["ci95"][0] > 0 and not vs["within_noise"]
    assert "better than" in result["verdict"]


def test_paired_bootstrap_draws_the_same_subjects_for_both(tmp_path: Path):
    """The same configuration twice: paired resamples differ by exactly nothing (unpaired ones would not)."""
    write_synthetic_sweep(tmp_path / "a", quality=0.6)
    groups = configurations(tmp_path / "a") * 2
    (_, twin) = compare_configurations(groups, n_boot=100)["ranking"]
    assert twin["vs_best"]["paired"] and twin["vs_best"]["ci95"] == [0.0, 0.0]
    assert twin["vs_best"]["within_noise"]


def test_compare_says_unpaired_when_the_subjects_differ(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "a", quality=0.6)
    write_synthetic_sweep(tmp_path / "b", quality=0.6, seed=3, skip_folds=(2,))
    result = compare_configurations(
        configurations(tmp_path / "a") + configurations(tmp_path / "b"), n_boot=100
    )
    other = result["ranking"][1]
    assert not other["vs_best"]["paired"] and "unpaired" in other["vs_best"]["note"]
    assert "incomplete" in result["verdict"]
    lower = compare_configurations(configurations(tmp_path / "a"), metric="loc_err_mm", n_boot=20)
    assert lower["higher_is_better"] is False
    with pytest.raises(CrossValidationError, match="unknown metric"):
        compare_configurations(configurations(tmp_path / "a"), metric="det_f2", n_boot=20)
