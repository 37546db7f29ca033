"""``tpnet-cv summarize`` / ``compare`` as a person runs them: the console script in a fresh process, on sweep
folders of synthetic out-of-fold records (the real sweep's CLI run is in tests/training/test_cv_sweep.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_cross_validation import write_synthetic_sweep

TPNET_CV = str(Path(sys.executable).with_name("tpnet-cv"))


def tpnet_cv(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([TPNET_CV, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_summarize_writes_the_summary_of_an_interrupted_sweep(tmp_path: Path):
    sweep = tmp_path / "sweep"
    write_synthetic_sweep(sweep, skip_folds=(2,))
    result = tpnet_cv("summarize", sweep, "--n-boot", "50")
    assert result.returncode == 0, result.stderr
    assert "missing folds [2]" in result.stdout and "cv_summary.json" in result.stdout
    summary = json.loads((sweep / "cv_summary.json").read_text())
    assert summary["configurations"][0]["missing_folds"] == [2]
    assert "missing" in (sweep / "cv_summary.md").read_text()


def test_compare_prints_the_choice_and_writes_json(tmp_path: Path):
    write_synthetic_sweep(tmp_path / "good", quality=0.95, seed=1)
    write_synthetic_sweep(tmp_path / "bad", quality=0.3, seed=2)
    out = tmp_path / "report" / "compare.json"
    result = tpnet_cv("compare", tmp_path / "bad", tmp_path / "good", "--n-boot", "100", "--out", out)
    assert result.returncode == 0, result.stderr
    assert f"use {tmp_path / 'good'} (det_f1" in result.stdout
    assert "paired" in result.stdout
    report = json.loads(out.read_text())
    assert report["best"] == str(tmp_path / "good") and report["ranking"][1]["vs_best"]["paired"]


def test_errors_are_one_line_naming_the_folder(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for args in (("summarize", tmp_path / "missing"), ("compare", empty), ("summarize", empty)):
        result = tpnet_cv(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith(f"tpnet-cv: {args[1]}") and result.stderr.count("\n") == 1, (
            result.stderr
        )
        assert "Traceback" not in result.stderr
