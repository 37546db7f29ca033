"""Checkpoints: atomic writes, safe loads (``weights_only=True``), RNG state capture.

A checkpoint is a plain dict (see docs/architecture.md). Writing goes to a temp file in the same folder,
is fsync'ed, then renamed over the target, so a crash or SIGKILL mid-write leaves the previous file intact.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpnet.atomic import atomic_open
from tpnet.training import fault_injection

CHECKPOINT_FORMAT = "tpnet-checkpoint"
CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("format", "version", "model", "epoch", "config", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated or not a tpnet checkpoint; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
        fault_injection.slow_checkpoint_write()  # inert outside the fault-tolerance tests


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: checkpoint is empty (zero bytes)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors for truncated or foreign files
        raise CheckpointError(
            f"{path}: not a readable checkpoint (corrupt, truncated or not saved by tpnet): {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a tpnet checkpoint (no format marker)")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} is newer than this tpnet understands "
            f"({CHECKPOINT_VERSION}); upgrade tpnet"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}")
    return state


def inference_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights to deploy: the EMA copy when training kept one."""
    return state["ema"] if state.get("ema") is not None else state["model"]


def load_deployable_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the checkpoint's network from its own config and load the deployable weights (EMA when kept).
    Returns the model in eval mode on ``device`` and the checkpoint dict (config, meta, run id...)."""
    from tpnet.models import build_model  # hydra is imported there, lazily

    state = load_checkpoint(path, map_location=device)
    meta = state["meta"]
    model = build_model(state["config"]["model"], len(meta["encoding"]["channels"]), len(meta["classes"]))
    model.load_state_dict(inference_weights(state))
    return model.to(device).eval(), state


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
