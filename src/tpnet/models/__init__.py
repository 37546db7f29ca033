"""Segmentation networks. Every model: Model(in_channels, num_classes, **hyper), forward(x) -> logits of the
same H x W, int attribute `size_multiple`. Build them from the Hydra `model` config with build_model()."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn


def build_model(model_cfg: Mapping[str, Any], in_channels: int, num_classes: int) -> nn.Module:
    """Instantiate `model_cfg` (DictConfig or dict with `_target_`) for the given channels and classes."""
    # Imported here so the inference path (which never builds from configs) does not need hydra.
    from hydra.utils import instantiate

    if "_target_" not in model_cfg:
        raise ValueError(f"model config has no '_target_': {dict(model_cfg)}")
    model = instantiate(model_cfg, in_channels=in_channels, num_classes=num_classes)
    if not isinstance(model, nn.Module) or not isinstance(getattr(model, "size_multiple", None), int):
        raise TypeError(
            f"{model_cfg['_target_']} did not build an nn.Module with an int `size_multiple` attribute"
        )
    return model
