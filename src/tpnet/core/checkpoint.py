"""Reading checkpoints: the format marker, the keys every tool relies on, and a safe load.

A checkpoint is a plain dict (docs/architecture.md); ``torch.load(weights_only=True)`` refuses anything but
tensors and plain containers, so a crafted file cannot run code. Writing them is training's job
(``tpnet.training.checkpoint``); evaluation, export and calibration only read them, through here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

CHECKPOINT_FORMAT = "tpnet-checkpoint"
CHECKPOINT_VERSION = 1
# Every key resume, evaluation or export reads without a default; a file without one is refused when loaded.
REQUIRED_KEYS = (
    "format",
    "version",
    "model",
    "epoch",
    "global_step",
    "best_metric",
    "bad_epochs",
    "config",
    "meta",
)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated or not a tpnet checkpoint; the message names the file."""


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
