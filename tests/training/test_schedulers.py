"""Every ``scheduler`` config option builds through Hydra exactly as ``tpnet-train`` builds it and steps
(``scheduler=onecycle`` passed ``warmup_fraction`` to a function that took ``warmup_steps``: a TypeError after
data set-up)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from tpnet.configuration import config_dir

SCHEDULERS = sorted(p.stem for p in (Path(config_dir()) / "scheduler").glob("*.yaml"))


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_option_builds_and_steps(name):
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=[f"scheduler={name}"])
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([weight], lr=1e-3)
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer, total_steps=20)  # as train.py calls it
    lrs = []
    for _ in range(20):
        optimizer.zero_grad()
        (weight**2).sum().backward()
        optimizer.step()
        scheduler.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    assert all(0 < lr <= 1e-3 * (1 + 1e-6) for lr in lrs), lrs
    assert max(lrs) > lrs[-1]  # warms up (or starts) high, then decays


def test_schedulers_found():
    assert {"cosine", "onecycle"} <= set(SCHEDULERS)
