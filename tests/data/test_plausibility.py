"""One set of plausibility rules: pixel size, field of view and stiffness, for check, training and inference."""

from __future__ import annotations

import csv
import io as text_io
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tpnet.core.contract import ContractError, load_manifest, load_spec, parse_row
from tpnet.core.plausibility import (
    FAR_FROM_TRAINING_FACTOR,
    PLAUSIBLE_FIELD_MM,
    PLAUSIBLE_SPACING_MM,
    SPACING_LIMITS_MM,
    STIFFNESS_KPA_RANGE,
    parse_spacing_mm,
    spacing_warnings,
    stiffness_problem,
)
from tpnet.data.check import DatasetCheckError, check_dataset, check_or_raise, main_check
from tpnet.data.dataset import load_frame


def _edit_manifest(root: Path, sample_id: str, column: str, value: str) -> None:
    with (root / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        if row["sample_id"] == sample_id:
            row[column] = value
    with (root / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _run_check(root: Path) -> tuple[int, list[str]]:
    stream = text_io.StringIO()
    code = main_check(root, stream=stream)
    return code, stream.getvalue().splitlines()


# --- the rules themselves ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, None, [0.1], {"mm": 0.1}, "fine", "", "nan", "inf", -0.1, 0])
def test_non_numeric_or_non_positive_spacing_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not a number|positive finite"):
        parse_spacing_mm(value)


@pytest.mark.parametrize("value", [1e9, 80.0, 1e-5])
def test_spacing_that_cannot_be_ultrasound_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="not an ultrasound pixel size"):
        parse_spacing_mm(value)


@pytest.mark.parametrize("value, expected", [(0.08, 0.08), ("0.08", 0.08), (1, 1.0), (" 0.5 ", 0.5)])
def test_numbers_and_numeric_text_are_accepted(value: object, expected: float) -> None:
    assert parse_spacing_mm(value) == expected


def test_constants_are_ordered_and_cover_the_reference_geometry() -> None:
    assert SPACING_LIMITS_MM[0] < PLAUSIBLE_SPACING_MM[0] < 0.06 < 0.09 < PLAUSIBLE_SPACING_MM[1]
    assert PLAUSIBLE_SPACING_MM[1] < SPACING_LIMITS_MM[1]
    assert PLAUSIBLE_FIELD_MM[0] < 38 < 50 < PLAUSIBLE_FIELD_MM[1]  # trapezius field width
    assert STIFFNESS_KPA_RANGE[0] == 0 and STIFFNESS_KPA_RANGE[1] >= 300  # widest muscle preset
    assert FAR_FROM_TRAINING_FACTOR < 10  # a 10x unit slip is always far


def test_a_plausible_trapezius_frame_raises_no_warning() -> None:
    assert spacing_warnings(0.08, shape=(500, 600), reference_mm=0.1) == []


def test_unit_slips_are_named() -> None:
    tenfold = spacing_warnings(0.8, shape=(500, 600), reference_mm=0.08)
    assert any("10x the model's training spacing" in w for w in tenfold)
    assert any("field of view 480 x 400 mm" in w for w in tenfold)
    thousandth = spacing_warnings(0.00008, shape=(500, 600))  # 0.08 mm / 1000
    assert any("implausible for musculoskeletal ultrasound" in w for w in thousandth)
    tenth = spacing_warnings(0.008, shape=(500, 600), reference_mm=0.08)
    assert any("pixel size 0.008 mm is implausible" in w for w in tenth)
    assert any("0.1x the model's training spacing" in w for w in tenth)


def test_stiffness_rules() -> None:
    ok = np.array([[np.nan, 12.0], [40.0, 300.0]], np.float32)
    assert stiffness_problem(ok, "kPa") is None
    assert stiffness_problem(np.full((2, 2), np.nan, np.float32), "kPa") is None  # no signal at all
    assert "negative" in stiffness_problem(np.array([[-50.0, 20.0]], np.float32), "kPa")
    assert "up to 1e+07 kPa" in stiffness_problem(np.array([[1e7, 20.0]], np.float32), "kPa")
    assert "negative" in stiffness_problem(np.array([[-3.0, 2.0]], np.float32), "m/s")  # before squaring
    assert "from m/s" in stiffness_problem(np.array([[40.0]], np.float32), "m/s")  # 4800 kPa
    assert "Inf" in stiffness_problem(np.array([[math.inf]], np.float32), "kPa")


# --- the same rules in check and training -----------------------------------------------------------


def test_manifest_spacing_1e9_is_refused_by_check_and_training(foreign_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    _edit_manifest(root, "P01_f0", "spacing_mm", "1e9")

    code, lines = _run_check(root)
    assert code == 1
    assert any(line.startswith("ERROR P01_f0:") and "not an ultrasound pixel size" in line for line in lines)
    with pytest.raises(DatasetCheckError, match="P01_f0.*not an ultrasound pixel size"):
        check_or_raise(root)  # what tpnet-train runs before data set-up (exit 2 with this message)
    with pytest.raises(ContractError, match="P01_f0: spacing_mm: 1e\\+09 mm/pixel"):
        parse_row({"sample_id": "P01_f0", "subject_id": "P01", "bmode": "x.png", "spacing_mm": "1e9"}, 2)


def test_boolean_spacing_in_dataset_yaml_is_refused(foreign_root: Path, tmp_path: Path) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    (root / "dataset.yaml").write_text("name: x\nelasto_unit: m/s\nspacing_mm: true\n")
    code, lines = _run_check(root)
    assert code == 1
    assert any("dataset.yaml" in line and "True is not a number" in line for line in lines), lines


def test_check_warns_for_implausible_field_of_view_and_far_spacing(
    foreign_root: Path, tmp_path: Path
) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    _edit_manifest(root, "P01_f0", "spacing_mm", "0.8")  # 10x its neighbours: a unit slip
    _edit_manifest(root, "P03_f1", "spacing_mm", "4.0")  # 90 px * 4 mm = 360 mm across
    code, lines = _run_check(root)
    assert code == 0  # warnings only
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert any(w.startswith("WARNING P01_f0:") and "the dataset's median" in w for w in warnings), warnings
    assert any(w.startswith("WARNING P03_f1:") and "field of view 360 x 280 mm" in w for w in warnings)
    assert any(w.startswith("WARNING P03_f1:") and "pixel size 4 mm is implausible" in w for w in warnings)


@pytest.mark.parametrize("stored, words", [(-50.0, "negative"), (1e7, "up to 1e+07 kPa")])
def test_absurd_kpa_is_refused_by_check_and_the_training_loader(
    foreign_root: Path, tmp_path: Path, stored: float, words: str
) -> None:
    root = shutil.copytree(foreign_root, tmp_path / "ds")
    (root / "dataset.yaml").write_text(
        (root / "dataset.yaml").read_text().replace("elasto_unit: m/s", "elasto_unit: kPa")
    )
    spec = load_spec(root)
    row = next(r for r in load_manifest(root) if r.elasto and r.elasto.endswith(".npy"))
    kpa = np.load(root / row.elasto).ravel()
    kpa[np.flatnonzero(np.isfinite(kpa))[0]] = stored  # one pixel is enough to poison a mean
    np.save(root / row.elasto, kpa.reshape(np.load(root / row.elasto).shape))

    report = check_dataset(root)
    assert [(p.where, p.reason.split(":")[0]) for p in report.errors] == [(row.sample_id, "absurd stiffness")]
    assert words in report.errors[0].reason
    with pytest.raises(ValueError, match=f"{row.sample_id}: elasto .*{re.escape(words)}"):
        load_frame(spec, row, 0.1)
