"""tpnet-infer's issue #14 outputs on real exported models: calibration applied, per-detection uncertainty and
evidence columns, "no trigger point found" rows, and named out-of-distribution warnings (with --strict:
rejections) on REAL frames from outside the training distribution (tests/fixtures/dltrack: muscle screenshots,
no SWE, no pixel size), but not on synthetic frames of held-out subjects."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model_files import MODEL_SPACING_MM, blob_frame, make_model_file
from tpnet.core.confidence import Calibration
from tpnet.core.encoding import Encoding, resample_frame
from tpnet.core.input_check import input_reference
from tpnet.core.io import write_png, write_tiff
from tpnet.data.synth import generate_frame
from tpnet.inference.cli import CSV_COLUMNS, FRAME_COLUMNS, NO_FINDING, main

DLTRACK = Path(__file__).parents[1] / "fixtures" / "dltrack" / "images"
CHANNELS = ("bmode", "elasto", "elasto_valid")
TEMPERATURE = 4.0


def _synthetic(subject, frame=0):
    """(B-mode [0, 1], kPa or None, spacing) of one synthetic frame (the demo's generator, 128 px)."""
    sample = generate_frame(0, subject, frame, 128, 128)
    return sample["bmode"].astype(np.float32) / 255.0, sample["elasto"], sample["spacing_mm"]


def _reference():
    """The training-input reference of subjects 0-11, encoded as the test model's network sees them."""
    encoding = Encoding(channels=CHANNELS)

    def encoded():
        for subject in range(12):
            for frame in range(2):
                bmode, kpa, spacing = _synthetic(subject, frame)
                bmode, kpa, _ = resample_frame(bmode, kpa, None, spacing, MODEL_SPACING_MM)
                yield encoding.encode(bmode, kpa)

    return input_reference(encoded(), CHANNELS)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    calibration = Calibration(temperature=TEMPERATURE, tta=True).to_dict()
    # p_active = active_fraction itself (logistic with weight 1 on its logit), validated as separable.
    identity = {
        "features": ["logit_active_fraction"],
        "mean": [0.0],
        "scale": [1.0],
        "intercept": 0.0,
        "coef": [1.0],
    }
    separable = Calibration(
        temperature=TEMPERATURE, tta=True, active=identity, active_separable=True
    ).to_dict()
    card = {"training_data": {"name": "synthetic test subjects", "synthetic": True}, "channels": list(CHANNELS),
            "spacing_mm": MODEL_SPACING_MM, "input_reference": _reference()}  # fmt: skip
    return {
        "plain": make_model_file(folder, name="plain.pt"),
        "calibrated": make_model_file(
            folder, name="calibrated.pt", edit_meta=lambda meta: meta.update(calibration=calibration)
        ),
        "separable": make_model_file(
            folder, name="separable.pt", edit_meta=lambda meta: meta.update(calibration=separable)
        ),
        "carded": make_model_file(
            folder, name="carded.pt", edit_meta=lambda meta: meta.update(model_card=card)
        ),
    }


def _infer(model, in_dir, out_dir, *extra):
    return main(["--model", str(model), "--input", str(in_dir), "--output", str(out_dir), *extra])


def _rows(path):
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) in (CSV_COLUMNS, FRAME_COLUMNS)
        return list(reader)


def _write(folder, stem, bmode, kpa, spacing_mm):
    write_png(folder / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
    if kpa is not None:
        write_tiff(folder / f"{stem}_elasto.tif", kpa)
    (folder / f"{stem}.json").write_text(json.dumps({"spacing_mm": spacing_mm}))


def test_calibrated_columns_uncertainty_depth_and_no_finding_rows(tmp_path, models, capsys):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bmode, kpa = blob_frame((12.8, 12.8), 0.2, nodules=[(4.0, 6.0, 1.5)], swe_box_mm=(0.0, 0.0, 12.8, 6.0))
    bmode[:5], bmode[5:8] = 0.45, 0.8  # gel, then the skin echo at row 5 (both background to the detector)
    _write(in_dir, "scene", bmode, kpa, 0.2)  # the SWE box covers the nodule's upper half only
    _write(in_dir, "empty", np.full((64, 64), 0.6, np.float32), np.full((64, 64), 30.0, np.float32), 0.2)

    assert _infer(models["plain"], in_dir, tmp_path / "plain") == 0
    assert _infer(models["calibrated"], in_dir, tmp_path / "tta") == 0
    assert _infer(models["calibrated"], in_dir, tmp_path / "one", "--no-tta") == 0

    plain, tta, one = (_rows(tmp_path / name / "detections.csv") for name in ("plain", "tta", "one"))
    (nodule,) = [r for r in tta if r["stem"] == "scene"]
    (empty,) = [r for r in tta if r["stem"] == "empty"]
    assert empty["finding"] == NO_FINDING and all(
        empty[c] == "" for c in CSV_COLUMNS if c not in ("stem", "finding")
    )
    # Without a validated active/latent model the type is not claimed.
    assert nodule["class"] == "indeterminate" and nodule["p_active"] == ""
    assert nodule["finding"] == "trigger point (active or latent: indeterminate)"
    assert _infer(models["separable"], in_dir, tmp_path / "separable") == 0
    (typed,) = [r for r in _rows(tmp_path / "separable" / "detections.csv") if r["stem"] == "scene"]
    assert typed["class"] == "active_trp" and typed["finding"] == "active trigger point"
    assert float(typed["p_active"]) > 0.6
    # The temperature is applied: the uncalibrated mean probability is softer than the untempered model's.
    (untempered,) = [r for r in plain if r["stem"] == "scene"]
    assert float(nodule["raw_confidence"]) < float(untempered["raw_confidence"]) - 0.05
    assert 0.0 <= float(nodule["confidence"]) <= 1.0
    # The detector is a 1x1 convolution, so the flip pass agrees exactly: a spread of 0, measured; one pass
    # (--no-tta) has nothing to spread: empty.
    assert float(nodule["confidence_sd"]) == 0.0 and float(nodule["centroid_sd_mm"]) == 0.0
    (single,) = [r for r in one if r["stem"] == "scene"]
    assert single["confidence_sd"] == single["centroid_sd_mm"] == ""
    assert float(nodule["depth_from_skin_mm"]) == pytest.approx(6.0 - 5 * 0.2, abs=0.25)  # y 6 mm, skin 1 mm
    assert float(nodule["swe_coverage"]) == pytest.approx(0.5, abs=0.1) and nodule["stiffness_note"] in (
        "",
        "low_coverage",
    )
    assert (
        float(nodule["stiffness_kpa_median"]) == pytest.approx(30.0)
        and float(nodule["stiffness_kpa_sd"]) == 0.0
    )

    summary = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert any("fitted with test-time augmentation" in w for w in summary["warnings"])  # --no-tta vs the fit
    frames = {r["stem"]: r for r in _rows(tmp_path / "tta" / "frames.csv")}
    assert frames["empty"]["trp_count"] == "0" and 0.0 <= float(frames["scene"]["p_trp_frame"]) <= 1.0
    assert (
        frames["scene"]["warnings"] == ""
        and "no trigger point found" in (tmp_path / "tta" / "detections.csv").read_text()
    )


def test_real_frames_out_of_distribution_warn_and_strict_rejects_them(tmp_path, models, capsys):
    in_dir = tmp_path / "dltrack"
    shutil.copytree(DLTRACK, in_dir)  # real muscle screenshots: no SWE, no pixel size

    assert _infer(models["carded"], in_dir, tmp_path / "lenient") == 0
    summary = json.loads((tmp_path / "lenient" / "summary.json").read_text())
    codes = {f["name"]: [w["code"] for w in f["warnings"]] for f in summary["frame_warnings"]}
    assert codes == {
        name: ["missing_modality", "pixel_size_assumed", "intensity_unlike_training"]
        for name in ("img_00085.png", "img_00304.png")
    }
    assert summary["warning_counts"] == {
        "missing_modality": 2,
        "pixel_size_assumed": 2,
        "intensity_unlike_training": 2,
    }
    assert (
        summary["model_card"]["training_data"]["synthetic"] is True
        and summary["model_card"]["input_statistic_test"]
    )
    frames = _rows(tmp_path / "lenient" / "frames.csv")
    assert {r["warnings"] for r in frames} == {
        "missing_modality;pixel_size_assumed;intensity_unlike_training"
    }
    err = capsys.readouterr().err
    assert "WARNING img_00085.png: intensity_unlike_training: image statistics unlike" in err

    assert _infer(models["carded"], in_dir, tmp_path / "strict", "--strict") == 3
    summary = json.loads((tmp_path / "strict" / "summary.json").read_text())
    assert summary["counts"]["frames_processed"] == 0
    reasons = {r["name"]: r["reason"] for r in summary["rejected"]}
    assert set(reasons) == {"img_00085.png", "img_00304.png"}
    assert all(
        r.startswith("rejected by --strict: missing_modality") and "intensity_unlike_training" in r
        for r in reasons.values()
    )
    assert "REJECTED img_00304.png: rejected by --strict" in capsys.readouterr().out
    assert not list((tmp_path / "strict" / "masks").glob("*.png"))  # the network never ran on them


def test_synthetic_frames_of_held_out_subjects_pass_strict(tmp_path, models):
    root = (
        tmp_path / "held_out"
    )  # a dataset root: the manifest's subject ids reach frames.csv and the summary
    root.mkdir()
    lines = ["sample_id,subject_id,bmode,elasto,spacing_mm"]
    for subject in range(40, 60):  # subjects the reference never saw
        bmode, kpa, spacing = _synthetic(subject)
        if (
            kpa is not None and len(lines) <= 8
        ):  # with SWE, as the model was trained (15 % of frames have none)
            write_png(root / f"s{subject}.png", np.round(bmode * 255).astype(np.uint8))
            write_tiff(root / f"s{subject}_swe.tif", kpa)
            lines.append(f"s{subject},p{subject % 2},s{subject}.png,s{subject}_swe.tif,{spacing}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    (root / "dataset.yaml").write_text("name: held out\nelasto_unit: kPa\n")

    assert _infer(models["carded"], root, tmp_path / "out", "--strict") == 0  # no warning, so none rejected
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["counts"]["frames_processed"] == 8 and summary["frame_warnings"] == []
    assert {r["subject_id"] for r in _rows(tmp_path / "out" / "frames.csv")} == {"p0", "p1"}
    assert [s["subject_id"] for s in summary["subjects"]] == ["p0", "p1"]
    assert sum(s["frames_analysed"] for s in summary["subjects"]) == 8
