"""One ``tpnet-train`` per run folder: a second run into a folder that a live run holds is refused (exit 2,
naming the folder and the owner's PID); the lock of a killed run is taken over and ``trainer.resume=auto``
continues it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tpnet.core.checkpoint import load_checkpoint
from tpnet.core.run_lock import FolderLockedError, lock_folder, unlock_folder
from tpnet.training.cli import RUN_LOCK_NAME
from train_helpers import checkpoint_epoch, run_train, sigkill, start_train, subprocess_env, wait_for

OWNER = """
import sys, time
from pathlib import Path
from tpnet.core.run_lock import lock_folder
lock_folder(Path(sys.argv[1]), sys.argv[2], "tpnet-train", "wait for it")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_live_owner_keeps_the_lock_and_a_dead_one_loses_it(tmp_path):
    folder = tmp_path / "run"
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(folder), RUN_LOCK_NAME], stdout=subprocess.PIPE, text=True
    )
    try:
        assert owner.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError) as refused:
            lock_folder(folder, RUN_LOCK_NAME, "tpnet-train", "wait for it")
        assert str(folder) in str(refused.value) and f"process {owner.pid}" in str(refused.value)
    finally:
        owner.kill()  # SIGKILL: no clean-up ran, the lock file stays behind
        owner.wait(timeout=30)
    assert (folder / RUN_LOCK_NAME).exists()
    lock = lock_folder(folder, RUN_LOCK_NAME, "tpnet-train", "wait for it")  # the OS released it: taken over
    assert lock.read_text().strip() == str(os.getpid())
    unlock_folder(lock)
    assert not lock.exists()


def test_a_pid_file_alone_does_not_lock(tmp_path):
    """An older tool's PID file (or one naming a live but unrelated process) is no lock: only the OS lock is."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / RUN_LOCK_NAME).write_text(f"{os.getppid()}\n")
    lock = lock_folder(folder, RUN_LOCK_NAME, "tpnet-train", "wait for it")
    assert lock.read_text().strip() == str(os.getpid())
    unlock_folder(lock)


@pytest.mark.slow
def test_second_train_into_a_busy_run_folder_is_refused_then_resume_takes_over(
    tmp_path, tiny_train_overrides
):
    run_dir = tmp_path / "run"
    overrides = [
        *tiny_train_overrides,
        "trainer.max_epochs=2",
        "trainer.test_after_training=false",
        "calibration.enabled=false",
        "logger.enabled=false",
        f"hydra.run.dir={run_dir}",
    ]
    marker = tmp_path / "validating"
    env = subprocess_env(TPNET_TEST_STALL="validate:2", TPNET_TEST_STALL_FILE=str(marker))
    first = start_train(overrides, env, tmp_path / "first.log")
    try:
        wait_for(marker.exists, 150, "validation of epoch 2", first)
        assert checkpoint_epoch(run_dir / "checkpoints/last.pt") == 1

        for extra in ([], ["trainer.resume=auto"]):
            second = run_train([*overrides, *extra], timeout=120)
            assert second.returncode == 2, second.stderr[-3000:]
            assert str(run_dir) in second.stderr and f"process {first.pid}" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr
        assert first.poll() is None  # the first run is untouched
        assert (run_dir / RUN_LOCK_NAME).read_text().strip() == str(first.pid)
        sigkill(first)
    finally:
        if first.poll() is None:
            first.kill()

    # The killed run's lock is stale: resume takes it over and finishes the run.
    resumed = run_train([*overrides, "trainer.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    assert load_checkpoint(run_dir / "checkpoints/last.pt")["epoch"] == 2
    assert not (run_dir / RUN_LOCK_NAME).exists()
