"""Helpers for the tests that run the real training CLI in subprocesses (tests/training, tests/tracking,
tests/evaluation): the tiny configuration, launching, waiting, and a loss that goes non-finite on purpose."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

TESTS_DIR = Path(__file__).resolve().parent
REPO = TESTS_DIR.parent

# 6 subjects x 3 frames (12/3/3 train/val/test frames), ~52 px frames at 0.2 mm/px, 3 steps of 4 patches per
# epoch, a 2-level U-Net 4 channels wide: each epoch takes well under a second on one core.
SYNTH = {"subjects": 6, "frames_per_subject": 3, "height": 96, "width": 96, "seed": 0}


def tiny_overrides(cache_dir: Path) -> list[str]:
    return [
        f"data.synthetic.cache_dir={cache_dir}",
        *(f"data.synthetic.{k}={v}" for k, v in SYNTH.items()),
        "data.spacing_mm=0.2",
        "data.patch_size=[32,32]",
        "data.batch_size=4",
        "data.num_workers=0",
        "model.base_width=4",
        "model.depth=2",
        "trainer.device=cpu",
        "evaluation.n_boot=20",
        "logger.progress_plot=false",  # test_readable_runs.py checks the plot; the other tiny runs need none
    ]


def subprocess_env(**extra: str) -> dict[str, str]:
    """One thread per process; tests/ importable (test losses); no tracking URI leaking in from outside."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "TPNET_TEST_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(TESTS_DIR), env.get("PYTHONPATH", "")]))
    env.update(extra)
    return env


def train_command(overrides: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "tpnet.training.cli", *overrides]


def run_train(
    overrides: Sequence[str], timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        train_command(overrides),
        cwd=REPO,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_train(overrides: Sequence[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """Background training whose output goes to ``log_path`` (a pipe could fill up and block it)."""
    log_file = log_path.open("w")
    return subprocess.Popen(
        train_command(overrides), cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition: Callable[[], Any], timeout: float, what: str, proc: subprocess.Popen | None = None):
    """Poll ``condition`` until truthy (returns its value); fails early if ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited (rc={proc.returncode}) before {what}")
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sigkill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(root: Path, store_template: Path) -> tuple[subprocess.Popen, str]:
    """A real ``mlflow server`` on 127.0.0.1 over a copy of a pre-migrated SQLite store (no migrations to wait
    for), serving artifacts from ``root/artifacts``; returns once ``/health`` answers."""
    import shutil
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(store_template, root / "server.db")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env=subprocess_env(),
        stdout=(root / "server.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its workers form one process group, stopped together
    )  # fmt: skip

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 90, f"mlflow server at {url} (log: {root / 'server.log'})", proc)
    except BaseException:
        stop_mlflow_server(proc)
        raise
    return proc, url


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def checkpoint_epoch(path: Path) -> int | None:
    """Completed epochs in a checkpoint, or None while it does not exist / is being replaced."""
    from tpnet.core.checkpoint import CheckpointError, load_checkpoint

    try:
        return int(load_checkpoint(path)["epoch"])
    except CheckpointError:
        return None


class NaNLoss(torch.nn.Module):
    """Cross-entropy that is NaN at the given training steps (0-based count of calls with gradients; the
    validation calls, made without gradients, are not counted). Used as ``loss._target_=train_helpers.NaNLoss``
    with ``+loss.nan_steps=[...]``; the other keys of the loss group are ignored."""

    def __init__(self, nan_steps: Sequence[int] = (), **ignored: Any) -> None:
        super().__init__()
        self.nan_steps = {int(s) for s in nan_steps}
        self.calls = 0

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, target, ignore_index=255)
        if logits.requires_grad:
            self.calls += 1
            if self.calls - 1 in self.nan_steps:
                return loss * float("nan")
        return loss


def mlflow_runs(tracking_uri: str, experiment: str = "tpnet") -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


def metric_steps(tracking_uri: str, run_id: str, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(tracking_uri=tracking_uri).get_metric_history(run_id, key)
    return sorted(m.step for m in history)


def read_history(run_dir: Path) -> list[dict]:
    """metrics.jsonl: one dict per logged epoch."""
    import json

    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def assert_same_training(reference: Path, other: Path) -> None:
    """Two run folders trained the same epochs to the same weights and metrics (CPU: bitwise equal)."""
    import json

    from tpnet.core.checkpoint import load_checkpoint

    ref_ckpt, ckpt = (
        load_checkpoint(reference / "checkpoints/last.pt"),
        load_checkpoint(other / "checkpoints/last.pt"),
    )
    assert (ckpt["epoch"], ckpt["global_step"]) == (ref_ckpt["epoch"], ref_ckpt["global_step"])
    for name, tensor in ref_ckpt["model"].items():
        assert torch.equal(tensor, ckpt["model"][name]), f"weights differ from the uninterrupted run: {name}"

    def comparable(rows: list[dict]) -> list[dict]:  # wall-clock speed differs run to run
        return [{k: v for k, v in row.items() if not k.startswith("throughput/")} for row in rows]

    assert comparable(read_history(other)) == comparable(read_history(reference))

    def test_metrics(run_dir: Path) -> dict:
        report = json.loads((run_dir / "metrics.json").read_text())
        return {k: v for k, v in report.items() if k != "checkpoint"}

    assert test_metrics(other) == test_metrics(reference)


# Runs a tool's main() with the rest of argv (what its console script does) and reports, at exit, which heavy
# modules it had imported by then: a configuration error must come before any of them.
_CONFIG_ERROR_RUNNER = """
import atexit, sys
HEAVY = ("torch", "mlflow", "albumentations", "tpnet.data.datamodule")
atexit.register(lambda: print("HEAVY", [m for m in HEAVY if m in sys.modules], file=sys.stderr))
sys.argv = [{tool!r}, *sys.argv[1:]]
from {module} import main
main()
"""


def assert_config_error_at_start(
    tool: str, module: str, overrides: Sequence[str], key: str, tmp_path: Path
) -> None:
    """``tool overrides...`` exits 2 with ``<tool>: configuration error: <key>: ...``, no traceback, before torch,
    MLflow, albumentations or the data are imported."""
    runner = _CONFIG_ERROR_RUNNER.format(tool=tool, module=module)
    result = subprocess.run(
        [sys.executable, "-c", runner, *overrides, f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{tool}: configuration error: {key}: " in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "HEAVY []" in result.stderr, result.stderr[-2000:]


def sigkill_mid_epoch_2(overrides: Sequence[str], run_dir: Path, tmp_path: Path) -> None:
    """Start ``tpnet-train overrides...``, let the stall hook park it after the first optimiser step of epoch 2
    (a known mid-epoch moment, epoch 1's checkpoint written), and SIGKILL it there."""
    marker = tmp_path / "mid_epoch_2"
    env = subprocess_env(TPNET_TEST_STALL="train:2", TPNET_TEST_STALL_FILE=str(marker))
    proc = start_train(overrides, env, tmp_path / "attempt1.log")
    try:
        wait_for(marker.exists, 150, "mid-epoch 2", proc)
        assert checkpoint_epoch(run_dir / "checkpoints/last.pt") == 1
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
