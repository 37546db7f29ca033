"""Real multi-process DDP on CPU: ``torchrun --nproc_per_node=2`` (gloo) around the real training CLI."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tpnet.core.checkpoint import load_checkpoint
from train_helpers import REPO, metric_steps, mlflow_runs, subprocess_env


def _torchrun(overrides: list[str], max_restarts: int, timeout: float, **env: str):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [f"--max-restarts={max_restarts}", "-m", "tpnet.training.cli", *overrides]
    start = time.monotonic()
    result = subprocess.run(
        command, cwd=REPO, env=subprocess_env(**env), capture_output=True, text=True, timeout=timeout
    )
    return result, result.stdout + result.stderr, time.monotonic() - start


def _ddp_overrides(tiny_train_overrides, mlflow_uri, run_dir):
    return [
        *tiny_train_overrides,
        "trainer.max_epochs=2",
        "trainer.ddp_timeout_s=30",  # a dead peer is an error within 30 s, never a hang
        "trainer.resume=auto",
        f"logger.tracking_uri={mlflow_uri}",
        f"hydra.run.dir={run_dir}",
    ]


@pytest.mark.slow
def test_two_ranks_train_and_a_torchrun_restart_resumes_after_a_lost_rank(
    tmp_path, tiny_train_overrides, mlflow_uri
):
    run_dir = tmp_path / "run"
    # Rank 1 dies at the start of epoch 2 on the first attempt only; torchrun restarts both workers once.
    result, output, _ = _torchrun(
        _ddp_overrides(tiny_train_overrides, mlflow_uri, run_dir),
        max_restarts=1,
        timeout=240,
        TPNET_TEST_KILL_RANK="1",
        TPNET_TEST_KILL_AT_EPOCH="1",
    )
    assert result.returncode == 0, output[-4000:]
    assert output.count("TPNET_TEST_KILL_RANK: rank 1 exits") == 1
    assert "rank 0 of world size 2" in output and "rank 1 of world size 2" in output
    assert output.count("resumed from") == 2  # both restarted ranks continue from last.pt
    # Validation is sharded (2 + 1 of the 3 val frames) and gathered: every epoch scores all 3 frames.
    assert output.count("validated 3 frames from 2 rank(s)") == 2

    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best.pt",
        "last.pt",
    ]  # rank 0 only
    last = load_checkpoint(run_dir / "checkpoints/last.pt")
    assert last["epoch"] == 2
    (run,) = mlflow_runs(mlflow_uri)  # one run, continued by the restart
    assert run.info.run_id == last["mlflow_run_id"] and run.info.status == "FINISHED"
    for key in ("train/loss", "val/loss", "val/dice_mean"):
        assert metric_steps(mlflow_uri, run.info.run_id, key) == [1, 2], key  # logged once, by rank 0
    assert (run_dir / "metrics.json").is_file()


@pytest.mark.slow
def test_a_lost_rank_fails_the_job_fast_without_restarts(tmp_path, tiny_train_overrides, mlflow_uri):
    run_dir = tmp_path / "run"
    result, output, elapsed = _torchrun(
        _ddp_overrides(tiny_train_overrides, mlflow_uri, run_dir),
        max_restarts=0,
        timeout=120,
        TPNET_TEST_KILL_RANK="1",
        TPNET_TEST_KILL_AT_EPOCH="1",
    )
    assert result.returncode != 0
    assert "ChildFailedError" in output and "exitcode  : 1" in output  # torchrun names the lost rank
    assert elapsed < 100  # no hang (the ddp timeout is 30 s)
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["epoch"] == 1  # ready for trainer.resume=auto
