"""Learning-rate schedules stepped once per optimiser step (Hydra builds them as partials)."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR


def cosine_with_warmup(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.05, min_lr_ratio: float = 0.01
) -> LRScheduler:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``min_lr_ratio`` of the base
    learning rate."""
    warmup_steps = int(warmup_fraction * total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def one_cycle(
    optimizer: Optimizer, total_steps: int, warmup_fraction: float = 0.3, div_factor: float = 25.0
) -> LRScheduler:
    """OneCycle up to the configured learning rate over ``warmup_fraction`` of the steps (the same key as
    ``cosine_with_warmup``, so ``scheduler=onecycle`` and ``scheduler=cosine`` take one set of overrides)."""
    max_lrs = [g["lr"] for g in optimizer.param_groups]
    pct = min(max(float(warmup_fraction), 0.01), 0.99)  # OneCycleLR needs 0 < pct_start < 1
    return OneCycleLR(
        optimizer, max_lr=max_lrs, total_steps=max(total_steps, 1), pct_start=pct, div_factor=div_factor
    )
