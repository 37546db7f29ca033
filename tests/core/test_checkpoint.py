"""Reading checkpoints: a file missing a key that resume, evaluation or export reads is refused when loaded,
naming the file and the key, not with a KeyError deep inside the tool."""

from __future__ import annotations

import pytest
import torch

from tpnet.core.checkpoint import REQUIRED_KEYS, CheckpointError, inference_weights, load_checkpoint
from tpnet.training.checkpoint import save_checkpoint


def _state() -> dict:
    weights = {"w": torch.zeros(2)}
    return {
        "model": weights, "ema": None, "epoch": 3, "global_step": 9, "best_metric": 0.5, "bad_epochs": 1,
        "config": {}, "meta": {}, "optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}, "mlflow_run_id": None,
    }  # fmt: skip


def test_saved_checkpoint_loads_with_every_required_key(tmp_path):
    save_checkpoint(_state(), tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    assert set(REQUIRED_KEYS) <= state.keys()
    assert state["bad_epochs"] == 1


@pytest.mark.parametrize("key", ["bad_epochs", "global_step", "best_metric", "epoch", "meta"])
def test_checkpoint_without_a_key_resume_reads_is_refused_naming_it(tmp_path, key):
    state = _state()
    del state[key]
    save_checkpoint(state, tmp_path / "last.pt")
    with pytest.raises(CheckpointError, match=rf"last\.pt: checkpoint lacks \['{key}'\]"):
        load_checkpoint(tmp_path / "last.pt")


def test_inference_weights_are_the_ema_when_kept():
    state = _state()
    assert inference_weights(state) is state["model"]
    state["ema"] = {"w": torch.ones(2)}
    assert inference_weights(state) is state["ema"]
