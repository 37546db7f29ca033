"""EMA (``trainer.ema_decay``, on in ``experiment=gpu_full``): the update rule, a resumed run's EMA equal to an
uninterrupted run's, and the EMA weights being what ``tpnet-export`` writes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tpnet.core.checkpoint import load_checkpoint
from tpnet.core.model_file import load_model_file
from tpnet.models import build_model
from tpnet.training.ema import EMA
from train_helpers import REPO, run_train, sigkill_mid_epoch_2, subprocess_env

EMA_DECAY = 0.8  # a tiny run takes ~9 steps: a decay near 1 would leave the EMA at the initial weights


def test_update_moves_each_weight_a_fraction_towards_the_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = EMA(model, decay=0.9)
    before = {k: v.clone() for k, v in ema.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)

    for name, value in model.state_dict().items():
        if value.dtype.is_floating_point:
            torch.testing.assert_close(ema.state_dict()[name], 0.9 * before[name] + 0.1 * value)
        else:  # integer buffers are copied, not averaged
            assert torch.equal(ema.state_dict()[name], value)
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the trained model is untouched

    fresh = EMA(torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)), decay=0.9)
    fresh.load_state_dict(ema.state_dict())
    for name, value in ema.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value)


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, tiny_train_overrides):
    """An uninterrupted 3-epoch tiny run with EMA, logging to SQLite."""
    root = tmp_path_factory.mktemp("ema")
    overrides = [
        *tiny_train_overrides,
        "trainer.max_epochs=3",
        f"trainer.ema_decay={EMA_DECAY}",
        f"logger.tracking_uri=sqlite:///{root / 'mlflow.db'}",
    ]
    result = run_train([*overrides, f"hydra.run.dir={root / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return root, overrides


@pytest.mark.slow
def test_checkpoints_keep_an_ema_that_differs_from_the_model(ema_run):
    root, _ = ema_run
    state = load_checkpoint(root / "run" / "checkpoints" / "last.pt")
    assert state["ema"] is not None and state["ema"].keys() == state["model"].keys()
    moved = [
        k
        for k, v in state["model"].items()
        if v.dtype.is_floating_point and not torch.equal(v, state["ema"][k])
    ]
    assert moved, "the EMA equals the model: it was never kept apart"


@pytest.mark.slow
def test_resumed_run_ends_with_the_ema_of_the_uninterrupted_run(tmp_path, ema_run):
    root, overrides = ema_run
    run_dir = tmp_path / "run"
    overrides = [
        *overrides[:-1],
        f"logger.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        f"hydra.run.dir={run_dir}",
    ]
    sigkill_mid_epoch_2(overrides, run_dir, tmp_path)
    result = run_train([*overrides, "trainer.resume=auto"])
    assert result.returncode == 0, result.stderr[-3000:]

    reference = load_checkpoint(root / "run" / "checkpoints" / "last.pt")
    resumed = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    for part in ("model", "ema"):
        for name, tensor in reference[part].items():
            assert torch.equal(tensor, resumed[part][name]), f"{part}.{name} differs after resume"


@pytest.mark.slow
def test_export_writes_the_ema_weights(tmp_path, ema_run):
    root, _ = ema_run
    checkpoint = root / "run" / "checkpoints" / "best.pt"
    output = tmp_path / "model.pt"
    result = subprocess.run(
        [sys.executable, "-m", "tpnet.export.cli", f"checkpoint={checkpoint}", f"output={output}",
         "log_to_mlflow=false", f"hydra.run.dir={tmp_path / 'hydra'}"],
        cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    state = load_checkpoint(checkpoint)
    meta = state["meta"]

    def network(weights: dict) -> torch.nn.Module:
        net = build_model(state["config"]["model"], len(meta["encoding"]["channels"]), len(meta["classes"]))
        net.load_state_dict(weights)
        return net.eval()

    images = torch.rand(2, len(meta["encoding"]["channels"]), 32, 32)
    with torch.inference_mode():
        exported = load_model_file(output).module(images)
        from_ema, from_model = network(state["ema"])(images), network(state["model"])(images)
    torch.testing.assert_close(exported, from_ema, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(exported, from_model, atol=1e-4), "export wrote the raw model, not the EMA"
