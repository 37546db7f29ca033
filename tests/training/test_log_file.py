"""``tpnet-train ... > log.txt`` (CI, SLURM's slurm-*.out) gives a log ``less`` can read: no carriage-return
progress frames, one plain line per epoch."""

from __future__ import annotations

import re
import shutil
import subprocess

from train_helpers import REPO, subprocess_env, train_command


def test_training_log_written_to_a_file_has_no_carriage_returns(
    tmp_path, tiny_train_overrides, mlflow_store_template
):
    shutil.copy(mlflow_store_template, tmp_path / "mlflow.db")
    log_path = tmp_path / "log.txt"
    overrides = [
        *tiny_train_overrides,
        "trainer.max_epochs=3",
        "data.samples_per_epoch=40",  # 10 steps per epoch: a bar would redraw within each epoch
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    with log_path.open("wb") as log_file:  # a file, as `> log.txt` gives: not a terminal, not a pipe
        code = subprocess.run(
            train_command(overrides), cwd=REPO, env=subprocess_env(), stdout=log_file, stderr=subprocess.STDOUT,
            timeout=300,
        ).returncode  # fmt: skip
    log = log_path.read_bytes()
    assert code == 0, log.decode(errors="replace")[-3000:]
    assert b"\r" not in log, "carriage returns in the log: " + repr(
        log[max(0, log.find(b"\r") - 200) :][:400]
    )
    epoch_lines = re.findall(rb"epoch (\d+): train/loss=", log)
    assert epoch_lines == [b"1", b"2", b"3"], log.decode(errors="replace")[-3000:]
