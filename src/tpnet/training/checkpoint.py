"""Writing checkpoints (atomic) and capturing the RNG state a bit-identical resume needs.

A checkpoint is a plain dict (see docs/architecture.md). Writing goes to a temp file in the same folder,
is fsync'ed, then renamed over the target, so a crash or SIGKILL mid-write leaves the previous file intact.
Reading them (safe, ``weights_only=True``) lives in ``tpnet.core.checkpoint``, which every tool shares.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpnet.core.atomic import atomic_open
from tpnet.core.checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION
from tpnet.training import fault_injection


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
        fault_injection.slow_checkpoint_write()  # inert outside the fault-tolerance tests


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a form ``weights_only`` loading accepts."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_as_tuple(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value: Any) -> Any:
    # torch.save keeps tuples, but be lenient with lists from other writers.
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value
