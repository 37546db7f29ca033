"""``tpnet-export`` on a checkpoint of a real (tiny) training run: both formats, MLflow logging + registry,
and a truncated checkpoint refused without touching anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tpnet.core.model_file import load_model_file, read_meta
from train_helpers import REPO, assert_config_error_at_start, subprocess_env


def _export(*overrides: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tpnet.export.cli", *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_export_cli_writes_both_formats_logs_and_registers(tmp_path, reference_run):
    from mlflow import MlflowClient

    checkpoint = reference_run / "checkpoints" / "best.pt"
    state = torch.load(checkpoint, weights_only=True)
    tracking_uri = f"sqlite:///{reference_run.parent / 'mlflow.db'}"
    for fmt, name in (("torchscript", "model.pt"), ("pt2", "model.pt2")):
        result = _export(
            f"checkpoint={checkpoint}",
            f"output={tmp_path / name}",
            f"format={fmt}",
            f"tracking_uri={tracking_uri}",
            "register_name=trp-export-test",
            "mlflow_model=false",  # the file as a plain artifact; MLflow Models: test_mlflow_model.py
            tmp_path=tmp_path,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        meta, _ = read_meta(tmp_path / name)
        assert meta["classes"] == state["meta"]["classes"]
        assert meta["spacing_mm"] == pytest.approx(state["meta"]["spacing_mm"])
        assert meta["mlflow_run_id"] == state["mlflow_run_id"]
        loaded = load_model_file(tmp_path / name)
        x = torch.rand(1, len(meta["encoding"]["channels"]), 32, 48)
        assert loaded.module(x).shape == (1, len(meta["classes"]), 32, 48)

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exported = {a.path for a in client.list_artifacts(state["mlflow_run_id"], "exported")}
    assert exported == {"exported/model_pt", "exported/model_pt2"}
    versions = client.search_model_versions("name='trp-export-test'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    assert {v.run_id for v in versions} == {state["mlflow_run_id"]}


def test_export_cli_refuses_a_truncated_checkpoint(tmp_path, reference_run):
    broken = tmp_path / "broken.pt"
    broken.write_bytes((reference_run / "checkpoints" / "best.pt").read_bytes()[:5000])
    before = broken.read_bytes()
    result = _export(
        f"checkpoint={broken}", f"output={tmp_path / 'model.pt'}", "log_to_mlflow=false", tmp_path=tmp_path
    )
    assert result.returncode == 2
    assert str(broken) in result.stderr and "checkpoint" in result.stderr
    assert broken.read_bytes() == before
    assert not (tmp_path / "model.pt").exists()


# ---- a typo fails at start: exit 2, the key named, no traceback, nothing heavy imported -----------------------

# Runs tpnet-export's real main() in a fresh interpreter and reports, at exit, which heavy modules it had imported.
OK = ["checkpoint=/nowhere/best.pt", "output=/nowhere/model.pt"]
EXPORT_TYPOS = [
    (["checkpint=/nowhere/best.pt", "output=/nowhere/model.pt"], "checkpint"),  # Hydra alone: exit 1
    ([*OK, "+register=trp"], "register"),  # appended, then silently ignored
    ([*OK, "format=tflite"], "format"),  # not a format tpnet writes (once silently exported TorchScript)
    ([*OK, "parity_frames=four"], "parity_frames"),  # wrong type
    ([*OK, "log_to_mlflow=maybe"], "log_to_mlflow"),
    ([*OK, "atol=0"], "atol"),  # out of range
    (["checkpoint=/nowhere/best.pt"], "output"),  # required
]


@pytest.mark.parametrize(("overrides", "key"), EXPORT_TYPOS, ids=[key for _, key in EXPORT_TYPOS])
def test_export_config_typo_fails_at_start_naming_the_key(tmp_path, overrides, key):
    assert_config_error_at_start("tpnet-export", "tpnet.export.cli", overrides, key, tmp_path)
