"""``tpnet-data check``: a foreign dataset passes, every planted fault is named, dataset-level faults fail."""

from __future__ import annotations

import io as text_io
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from foreign import (
    FAULTS,
    FOREIGN_ROWS,
    FOREIGN_SPACING_MM,
    FOREIGN_SUBJECTS,
    write_faulty_dataset,
)
from tpnet.core import io
from tpnet.core.contract import load_manifest, load_spec, resolve_path, row_spacing_mm
from tpnet.data import cli
from tpnet.data.check import DatasetCheckError, check_dataset, check_or_raise, main_check


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("faulty") / "ds"
    return root, write_faulty_dataset(root)


def run_check(root: Path) -> tuple[int, list[str]]:
    stream = text_io.StringIO()
    code = main_check(root, stream=stream)
    return code, stream.getvalue().splitlines()


def test_foreign_dataset_passes_with_summary(foreign_root: Path) -> None:
    code, lines = run_check(foreign_root)
    assert code == 0, "\n".join(lines)
    assert not [line for line in lines if line.startswith(("ERROR", "WARNING"))]
    summary = check_dataset(foreign_root).summary
    assert summary["frames"] == len(FOREIGN_ROWS)
    assert summary["subjects"] == len(FOREIGN_SUBJECTS)
    assert summary["frames_per_split"] == "unassigned: split by subject at train time"
    assert summary["frames_with_swe"] == sum(bool(r[4]) for r in FOREIGN_ROWS)
    assert summary["frames_labelled"] == sum(r[5] for r in FOREIGN_ROWS)
    assert summary["trp_count"]["active_trp"] > 0 and summary["trp_count"]["latent_trp"] > 0
    assert sum(summary["class_pixel_fraction"].values()) == pytest.approx(1.0)
    # 2-6 m/s is 12-108 kPa; TrPs were written stiffer (4.5-6 m/s = 61-108 kPa) than the muscle.
    stiffness = summary["stiffness_kpa"]
    assert 12 <= stiffness["all"]["p5"] < stiffness["all"]["p95"] <= 108.5
    assert stiffness["active_trp"]["p50"] > stiffness["background"]["p50"]
    assert any("unassigned: split by subject" in line for line in lines)


def test_foreign_dataset_loads_through_io_in_kpa(foreign_root: Path) -> None:
    spec = load_spec(foreign_root)
    rows = load_manifest(foreign_root)
    assert spec.elasto_unit == "m/s" and [r.sample_id for r in rows] == [r[0] for r in FOREIGN_ROWS]
    for row, (_, _, shape, _, elasto_format, labelled, spacing) in zip(rows, FOREIGN_ROWS, strict=True):
        bmode = io.read_bmode(resolve_path(foreign_root, row.bmode))
        assert bmode.shape == shape and bmode.dtype == np.float32 and 0.0 <= bmode.min() <= bmode.max() <= 1.0
        assert row_spacing_mm(row, spec) == (float(spacing) if spacing else FOREIGN_SPACING_MM)
        assert (row.mask is not None) == labelled
        if not elasto_format:
            assert row.elasto is None
            continue
        path = resolve_path(foreign_root, row.elasto)
        speed = np.load(path) if path.suffix == ".npy" else tifffile.imread(path)
        kpa = io.read_elasto(path, spec.elasto_unit)
        np.testing.assert_allclose(kpa, 3.0 * speed.astype(np.float64) ** 2, rtol=1e-5)  # E = 3 rho c^2
        valid = kpa[np.isfinite(kpa)]
        assert np.isnan(kpa).any() and valid.min() >= 12.0 and valid.max() <= 108.0


def test_every_planted_fault_is_named_once(faulty: tuple[Path, dict[str, str]]) -> None:
    root, planted = faulty
    code, lines = run_check(root)
    assert code == 1
    output = "\n".join(lines)
    for sample_id, fault in planted.items():
        level, words = FAULTS[fault]
        named = [
            line for line in lines if line.startswith(("ERROR ", "WARNING ")) and f" {sample_id}: " in line
        ]
        assert len(named) == 1, f"{fault}: expected one line naming {sample_id}, got {named}\n{output}"
        assert named[0].startswith(f"{level.upper()} {sample_id}: ") and words in named[0], named[0]
    clean = [line for line in lines if line.split(" ", 2)[1:2] in (["ok_a:"], ["ok_b:"], ["ok_c:"])]
    assert clean == []


def test_planted_faults_through_cli(
    faulty: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture
) -> None:
    root, planted = faulty
    try:
        code = cli.main(["check", str(root)])
    except SystemExit as exc:  # argparse-style CLIs may exit instead of returning
        code = exc.code
    out = capsys.readouterr().out
    assert code == 1
    for sample_id in planted:
        assert f" {sample_id}: " in out


def test_check_or_raise(foreign_root: Path, faulty: tuple[Path, dict[str, str]]) -> None:
    assert check_or_raise(foreign_root).ok
    root, _ = faulty
    with pytest.raises(DatasetCheckError, match="truncated_png") as info:
        check_or_raise(root)
    assert "symlink_outside" in str(info.value) and "elasto_all_nan" not in str(
        info.value
    )  # warnings not listed


def test_output_order_is_manifest_order_whatever_the_threads(faulty: tuple[Path, dict[str, str]]) -> None:
    root, _ = faulty
    serial = check_dataset(root, workers=1)
    threaded = check_dataset(root, workers=4)
    assert serial.problems == threaded.problems and serial.summary == threaded.summary
    names = [p.where for p in serial.problems if p.where in FAULTS]
    assert names == [name for name in FAULTS if name in names]  # FAULTS lists them in manifest order


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_dataset_level_faults(foreign_root: Path, tmp_path: Path) -> None:
    cases = {
        "missing dataset.yaml": (lambda r: (r / "dataset.yaml").unlink(), "dataset.yaml: missing"),
        "missing manifest": (lambda r: (r / "manifest.csv").unlink(), "missing manifest.csv"),
        "header lacks subject_id": (
            lambda r: (r / "manifest.csv").write_text("sample_id,bmode\na,P01/bmode/P01_f0.png\n"),
            "lacks required column(s) ['subject_id']",
        ),
        "unknown unit": (
            lambda r: (r / "dataset.yaml").write_text("name: x\nelasto_unit: Pa\n"),
            "unknown elasto_unit 'Pa'",
        ),
        "non-positive spacing": (
            lambda r: (r / "dataset.yaml").write_text("name: x\nelasto_unit: m/s\nspacing_mm: 0\n"),
            "must be a positive",
        ),
        "non-numeric spacing": (
            lambda r: (r / "dataset.yaml").write_text("name: x\nelasto_unit: m/s\nspacing_mm: fine\n"),
            "is not a number",
        ),
        "empty manifest": (
            lambda r: (r / "manifest.csv").write_text("sample_id,subject_id,bmode\n"),
            "no rows",
        ),
    }
    for index, (case, (break_it, words)) in enumerate(cases.items()):
        root = _copy(foreign_root, tmp_path / f"case{index}")
        break_it(root)
        code, lines = run_check(root)
        errors = [line for line in lines if line.startswith("ERROR ")]
        assert code == 1, f"{case}: {lines}"
        assert any(words in line and str(root) in line for line in errors), f"{case}: {errors}"


def test_no_spacing_anywhere_is_one_warning(foreign_root: Path, tmp_path: Path) -> None:
    root = _copy(foreign_root, tmp_path / "ds")
    (root / "dataset.yaml").write_text("name: x\nelasto_unit: m/s\n")
    manifest = (root / "manifest.csv").read_text().splitlines()
    header = manifest[0].split(",")
    column = header.index("spacing_mm")
    rows = [line.split(",") for line in manifest[1:]]
    for row in rows:
        row[column] = ""
    (root / "manifest.csv").write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    code, lines = run_check(root)
    warnings = [line for line in lines if line.startswith("WARNING")]
    assert code == 0
    assert len(warnings) == 1 and "target spacing" in warnings[0]


def test_mixed_split_column_is_an_error(foreign_root: Path, tmp_path: Path) -> None:
    root = _copy(foreign_root, tmp_path / "ds")
    lines = (root / "manifest.csv").read_text().splitlines()
    lines[0] += ",split"
    lines[1] += ",train"  # one row with a split, the rest without
    lines[2:] = [line + "," for line in lines[2:]]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    code, out = run_check(root)
    assert code == 1
    assert any("split is set on 1 of 10 rows" in line for line in out)


def test_metres_per_second_that_are_really_kpa_are_absurd(foreign_root: Path, tmp_path: Path) -> None:
    """A kPa map declared as m/s squares into the tens of thousands: caught, not trained on."""
    root = _copy(foreign_root, tmp_path / "ds")
    row = next(r for r in load_manifest(root) if r.elasto and r.elasto.endswith(".npy"))
    speed = np.load(root / row.elasto)
    np.save(root / row.elasto, np.full_like(speed, 40.0))  # 40 "m/s" = 4800 kPa
    report = check_dataset(root)
    assert [(p.where, p.reason.split(":")[0]) for p in report.errors] == [(row.sample_id, "absurd stiffness")]
