"""Quick run of scripts/active_latent_sweep.py: two effect sizes (one per swept parameter) through the real
tpnet-train, one JSON line each and the plot. It checks the plumbing, not the science: one epoch on 96 px frames
learns nothing, and the tiny test split may hold no trigger point (class_acc null, said why)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import yaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "active_latent_sweep.py"


def test_quick_sweep_writes_one_row_per_effect_size_and_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    args = [sys.executable, str(SCRIPT), "--quick", "--factors", "2", "--echo-db", "6", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]

    rows = [json.loads(line) for line in (out / "active_latent_sweep.jsonl").read_text().splitlines()]
    assert [(r["series"], r["active_stiffness_factor"], r["active_echo_db"]) for r in rows] == [
        ("stiffness", 2.0, 0.0),
        ("echo", 1.0, 6.0),
    ]
    for row in rows:
        assert row["effect_size"] in (2.0, 6.0) and row["seed"] == 0
        assert "--quick" in row["command"] and "tpnet-train" in row["train_command"]
        if row["class_acc"] is None:
            assert row["class_acc_undefined"]  # metrics.json's reason travels with the null
        else:
            low, high = row["class_acc_ci95"]
            assert 0.0 <= low <= row["class_acc"] <= high <= 1.0
        # the run trained on the data set with that effect (tpnet-train generated it from the overrides)
        config = yaml.safe_load((Path(row["run_dir"]) / "config.yaml").read_text())
        synthetic = config["data"]["synthetic"]
        assert (synthetic["active_stiffness_factor"], synthetic["active_echo_db"]) == (
            row["active_stiffness_factor"],
            row["active_echo_db"],
        )
    caches = sorted(p.name for p in (out / "cache").iterdir())
    assert caches == ["synth-v2-seed0-6x3-96x96-active-stiffness1.0x-echo6.0db",
                      "synth-v2-seed0-6x3-96x96-active-stiffness2.0x-echo0.0db"]  # fmt: skip

    image = cv2.imread(str(out / "active_latent_sweep.png"))
    assert image is not None and image.shape[0] > 300 and image.shape[1] > 800  # two panels side by side


def test_nothing_to_sweep_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--factors", "", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and "nothing to sweep" in done.stderr
