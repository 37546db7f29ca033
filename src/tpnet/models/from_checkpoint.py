"""Rebuild a checkpoint's network from its own config and load the weights to deploy (EMA when kept).

Evaluation, export and calibration all start from a checkpoint this way; none of them needs training code.
A model trained with deep supervision is rebuilt without it: the auxiliary heads only served the training loss,
and the deployable network returns one logits tensor (what TorchScript, torch.export and tpnet-infer expect).
Several checkpoints (the folds of a cross-validation) become one ``FoldEnsemble`` (``load_deployable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tpnet.core.checkpoint import inference_weights, load_checkpoint
from tpnet.core.encoding import Encoding
from tpnet.models import build_model
from tpnet.models.ensemble import FoldEnsemble, check_members_agree, ensemble_info, ensemble_meta
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
    in_channels = Encoding.from_dict(meta["encoding"]).in_channels  # + 2k context planes (2.5-D)
    model = build_model(model_cfg, in_channels, len(meta["classes"]))
    model.load_state_dict(weights)  # strict: every other weight must match
    return model.to(device).eval(), state


@dataclass
class Deployable:
    """One checkpoint's network, or the ensemble of several, with what the tools need to describe it."""

    model: torch.nn.Module
    meta: dict[str, Any]  # checkpoint-style: the keywords of core.model_file.build_meta
    paths: list[Path]
    states: list[dict[str, Any]]  # each checkpoint's dict (config, meta, mlflow_run_id), in order
    ensemble: dict[str, Any] | None  # models.ensemble.ensemble_info; None for a single checkpoint

    @property
    def first_state(self) -> dict[str, Any]:
        """The checkpoint whose config gives the data set-up (the only one, or the first fold)."""
        return self.states[0]


def checkpoint_paths(checkpoint: Any) -> list[Path]:
    """``checkpoint=PATH`` or ``checkpoint=[PATH, ...]`` (a list from Hydra, a ListConfig) as a list of paths."""
    if isinstance(checkpoint, str | Path):
        return [Path(checkpoint)]
    if isinstance(checkpoint, Sequence) or hasattr(checkpoint, "__iter__"):
        paths = [Path(str(p)) for p in checkpoint]
        if paths:
            return paths
    raise ValueError(f"checkpoint must be a path or a non-empty list of paths; got {checkpoint!r}")


def load_deployable(checkpoint: Any, device: str | torch.device = "cpu") -> Deployable:
    """A single checkpoint (or a one-element list) loads as that model; several as their ``FoldEnsemble``.
    Raises ``tpnet.models.ensemble.EnsembleError`` when the checkpoints do not agree on the model contract."""
    paths = checkpoint_paths(checkpoint)
    loaded = [load_deployable_model(path, device) for path in paths]
    models = [model for model, _ in loaded]
    states = [state for _, state in loaded]
    if len(paths) == 1:
        return Deployable(models[0], states[0]["meta"], paths, states, None)
    metas = [state["meta"] for state in states]
    check_members_agree(paths, metas)
    ensemble = FoldEnsemble(models).to(device).eval()
    return Deployable(ensemble, ensemble_meta(metas), paths, states, ensemble_info(paths, states))
