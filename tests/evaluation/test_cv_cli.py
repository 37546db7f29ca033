"""``tpnet-cv compare`` and the errors as a person meets them: the console script in a fresh process, on sweep
folders of synthetic out-of-fold records (summarize of a real sweep with a crashed fold: test_cv_sweep.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_cross_validation import write_synthetic_sweep

TPNET_CV = str(Path(sys.executable).with_name("tpnet-cv"))


def tpnet_cv(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([TPNET_CV, *map(str, args)], capture_output=True, text=True, timeout=60)


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
