"""Model size and cost: parameter count and forward FLOPs (for run logs and the model card)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Forward FLOPs (a multiply-add counts 2) for one zero input of `input_shape` (B, C, H, W), on CPU.
    Runs a copy in eval mode, so neither the model's mode nor its BatchNorm statistics change."""
    counted = copy.deepcopy(model).cpu().eval()
    x = torch.zeros(tuple(input_shape), dtype=torch.float32)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        counted(x)
    return int(counter.get_total_flops())
