"""Rebuild a checkpoint's network from its own config and load the weights to deploy (EMA when kept).

Evaluation, export and calibration all start from a checkpoint this way; none of them needs training code.
A model trained with deep supervision is rebuilt without it: the auxiliary heads only served the training loss,
and the deployable network returns one logits tensor (what TorchScript, torch.export and tpnet-infer expect).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from tpnet.core.checkpoint import inference_weights, load_checkpoint
from tpnet.models import build_model
from tpnet.models.unet import AUX_HEADS


def load_deployable_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model in eval mode on ``device`` and the checkpoint dict (config, meta, run id...)."""
    state = load_checkpoint(path, map_location=device)
    meta = state["meta"]
    model_cfg = dict(state["config"]["model"])
    weights = inference_weights(state)
    if model_cfg.get("deep_supervision"):
        model_cfg["deep_supervision"] = False
        weights = {k: v for k, v in weights.items() if not k.startswith(f"{AUX_HEADS}.")}
    model = build_model(model_cfg, len(meta["encoding"]["channels"]), len(meta["classes"]))
    model.load_state_dict(weights)  # strict: every other weight must match
    return model.to(device).eval(), state
