"""Which device and which autocast precision a tool runs with (training, evaluation, calibration)."""

from __future__ import annotations

import torch


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; asking for CUDA without one is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto"
        )
    return torch.device(name)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """None = full fp32. ``auto``: bf16 on GPUs that support it, else fp16 (with a grad scaler); fp32 on CPU."""
    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
