"""Rebuild a checkpoint's network from its own config and load the weights to deploy (EMA when kept).

Evaluation, export and calibration all start from a checkpoint this way; none of them needs training code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tpnet.core.checkpoint import inference_weights, load_checkpoint
from tpnet.models import build_model


def load_deployable_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode on ``device`` and the checkpoint dict (config, meta, run id...)."""
    state = load_checkpoint(path, map_location=device)
    meta = state["meta"]
    model = build_model(state["config"]["model"], len(meta["encoding"]["channels"]), len(meta["classes"]))
    model.load_state_dict(inference_weights(state))
    return model.to(device).eval(), state
