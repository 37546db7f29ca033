"""Smoke run of scripts/generalisation.py: datasets A and B, one tiny training, three scored rows, the tables.

It checks the script's plumbing (tpnet-data synth, tpnet-train, tpnet-eval as subprocesses, results.jsonl,
table.md, resuming), not the recipes: 1 epoch on 64 px frames learns nothing worth a figure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "generalisation.py"


@pytest.mark.slow  # ~30 s: 2 synth, 1 train and 3 eval subprocesses
def test_smoke_run_writes_results_and_tables(tmp_path: Path) -> None:
    out = tmp_path / "g"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--smoke"],
                          capture_output=True, text=True, timeout=240, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rows] == ["planned_A_A", "planned_A_B", "no_calibration"]
    for r in rows:
        for key in ("det_f1", "det_precision", "det_recall"):
            assert r.get(key) is None or 0.0 <= r[key] <= 1.0, key  # null: no true TrP in the smoke test split
        if r["det_f1"] is not None:
            assert r["det_f1_ci95"][0] <= r["det_f1"] <= r["det_f1_ci95"][1]
        assert r["train_wall_s"] > 0
        assert r["n_test_subjects"] == 2  # 25 % of 8 subjects
    assert {r["test_on"] for r in rows} == {"A", "B"}
    # one training serves all three rows (no calibration = the same checkpoint, default post-processing)
    assert len({r["training"] for r in rows}) == 1
    assert rows[2]["eval_overrides"] and not rows[1]["eval_overrides"]

    table = (out / "table.md").read_text()
    for heading in ("## Generalisation", "## Ablation", "## Goals of issue #12", "Machine:", "Command:"):
        assert heading in table
    assert "| planned | A → B |" in table and "no calibration" in table

    # --skip-existing resumes: finished rows are read back, nothing is retrained
    again = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), "--smoke", "--skip-existing"],
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert "tpnet-train" not in again.stderr and "tpnet-eval" not in again.stderr
    assert (out / "results.jsonl").read_text().count("\n") == 3


def test_unknown_row_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--only", "planed_A_B"],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and "unknown row" in done.stderr
