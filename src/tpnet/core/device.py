"""Which device and which autocast precision a tool runs with (training, evaluation, calibration, inference).

torch and onnxruntime are imported inside the functions that need them: the base install (ONNX inference)
has no torch, the training tools always have it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ONNX_CPU, ONNX_CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class DeviceUnavailableError(RuntimeError):
    """The requested device cannot be used here; the message says why and what to use instead."""


def pick_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else CPU; asking for CUDA without one is an error, not a silent CPU run."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "trainer.device=cuda but no CUDA device is available; use trainer.device=cpu or auto"
        )
    return torch.device(name)


def amp_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """None = full fp32. ``auto``: bf16 on GPUs that support it, else fp16 (with a grad scaler); fp32 on CPU."""
    import torch

    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def torch_inference_device(name: str) -> str:
    """A TorchScript / .pt2 model's device: ``auto`` is CUDA when torch sees a GPU, else CPU."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError("CUDA requested but torch sees no CUDA GPU; use the CPU")
    return name


def onnxruntime_providers(name: str) -> list[str]:
    """onnxruntime execution providers for ``cpu``, ``cuda`` or ``auto`` (= CPU: the CUDA provider only when
    asked for, since onnxruntime-gpu lists it even on a machine without a usable GPU). CUDA comes first, with
    the CPU provider behind it for any operator CUDA lacks; asking for CUDA where this onnxruntime has no CUDA
    provider is an error, not a silent CPU run."""
    import onnxruntime

    name = name.split(":")[0]  # "cuda:0" as torch writes it: onnxruntime uses device 0 by default
    if name in ("cpu", "auto"):
        return [ONNX_CPU]
    if name != "cuda":
        raise DeviceUnavailableError(f"unknown device {name!r} for an ONNX model; use cpu or cuda")
    available = onnxruntime.get_available_providers()
    if ONNX_CUDA not in available:
        raise DeviceUnavailableError(
            f"CUDA requested but this onnxruntime {onnxruntime.__version__} has no CUDA provider (it has "
            f"{', '.join(available)}); install onnxruntime-gpu in its place, or use the CPU"
        )
    return [ONNX_CUDA, ONNX_CPU]
