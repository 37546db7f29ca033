"""Out-of-range configuration values end at start in one line, ``configuration error: <key>: <why>``, exit 2,
no traceback, before any data set-up (data.root points nowhere: reaching it would fail with another message).

Runs the real CLI entry point in this process (Hydra included): a subprocess per case would cost seconds each."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tpnet.training.cli import RUN_LOCK_NAME

CASES = [
    ("data.batch_size=0", "data.batch_size"),
    ("data.num_workers=-1", "data.num_workers"),
    ("data.patch_size=[0,0]", "data.patch_size"),
    ("data.channels=[elasto]", "data.channels"),
    ("data.synthetic.active_stiffness_factor=0", "data.synthetic.active_stiffness_factor"),
    ("calibration.active_band=0.6", "calibration.active_band"),
    ("trainer.device=cuda", "trainer.device"),
    ("optim.lr=-1", "optim.lr"),
    ("data.val_fraction=1.5", "data.val_fraction"),
    ("data.spacing_mm=-0.1", "data.spacing_mm"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches"),
    ("seed=abc", "seed"),
    ("trainer.resume={missing}", "trainer.resume"),
    ("{existing run}", "hydra.run.dir"),
    ("trainer.monitor=val/bogus", "trainer.monitor"),
]


def run_cli(overrides: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``tpnet-train <overrides>`` in-process: (exit code, stderr)."""
    from tpnet.training import cli

    monkeypatch.setattr(sys, "argv", ["tpnet-train", *overrides])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    return exited.value.code, capsys.readouterr().err


def _write_started_run(run_dir: Path) -> None:
    """What a run killed after its first epoch leaves (besides checkpoints)."""
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1, "train/loss": 1.0}\n')


@pytest.mark.parametrize(("override", "key"), CASES, ids=[key for _, key in CASES])
def test_out_of_range_value_is_a_configuration_error_naming_the_key(
    tmp_path, monkeypatch, capsys, override, key
):
    if override == "trainer.device=cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    run_dir = tmp_path / "run"
    if override == "{existing run}":
        _write_started_run(run_dir)
        override = "trainer.max_epochs=2"  # any ordinary value: the folder is what is refused
    override = override.replace("{missing}", str(tmp_path / "missing" / "last.pt"))
    code, stderr = run_cli(
        [override, f"hydra.run.dir={run_dir}", f"data.root={tmp_path / 'no_dataset'}"], monkeypatch, capsys
    )
    assert code == 2
    assert f"configuration error: {key}: " in stderr, stderr
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "configuration error" in line]
    assert len(line.split(f"{key}: ", 1)[1]) > 10, "the reason is missing"
    assert not (run_dir / "checkpoints").exists()
    assert not (run_dir / RUN_LOCK_NAME).exists()  # released on the way out


def test_resume_auto_into_an_existing_run_is_not_refused(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    _write_started_run(run_dir)
    missing = tmp_path / "no_dataset"
    code, stderr = run_cli(
        ["trainer.resume=auto", f"hydra.run.dir={run_dir}", f"data.root={missing}"], monkeypatch, capsys
    )
    # Past every start-up check: it got as far as the data set-up, which names the missing dataset.
    assert code == 2 and "configuration error" not in stderr and str(missing) in stderr, stderr
    assert "Traceback" not in stderr


def test_the_appearance_choices_are_the_generators_presets():
    """The config check lists the synthetic generator's presets without importing it: keep the two in step."""
    from tpnet.configuration import _CHOICES
    from tpnet.data.synth import APPEARANCES

    assert set(_CHOICES["data.synthetic.appearance"]) == set(APPEARANCES)
