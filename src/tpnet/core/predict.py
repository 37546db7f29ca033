"""Full-frame prediction: pad to the network's stride, run (under autocast when asked), crop back, softmax.

The one place every tool turns a model and images into class probabilities: validation, calibration,
evaluation and the inference tool all call ``predict_probs``, so they see exactly the same numbers.
``predict_probs_numpy`` is the same algorithm on numpy arrays, for ONNX models run by onnxruntime where no
torch is installed (tests/inference/test_onnx_torch_free.py holds the two to the same numbers).
Imports numpy/OpenCV (via ``tpnet.core.encoding``) and the standard library; torch only inside
``predict_probs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from tpnet.core.encoding import pad_amounts

if TYPE_CHECKING:
    import torch


def _run_padded(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    multiple: int,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Zero-pad bottom/right to ``multiple``, run, crop to the input size, softmax in float32."""
    import torch
    import torch.nn.functional as F

    height, width = images.shape[-2:]
    pad_h, pad_w = pad_amounts(height, width, multiple)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(padded)
    _check_logits(tuple(logits.shape), images.shape[0])
    # float32 before softmax, outside autocast: bf16/fp16 logits lose the small probabilities.
    return torch.softmax(logits[..., :height, :width].float(), dim=1)


def predict_passes(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    size_multiple: int,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(B, C, H, W) images -> (P, B, K, H, W) float32 class probabilities of each test-time pass: P = 1, or
    with ``tta`` P = 2 (identity, horizontal (lateral) flip). Their spread is the detections' uncertainty
    (issue #14); ``predict_probs`` is their mean, tempered."""
    import torch

    _check_inputs(tuple(images.shape), size_multiple)
    with torch.inference_mode():
        passes = [_run_padded(model, images, int(size_multiple), amp_dtype)]
        if tta:
            # Only the lateral (left-right) flip is a valid ultrasound augmentation: the vertical axis
            # is depth, with the skin line on top and attenuation/shadowing growing downwards, so an
            # upside-down frame is not a scan the network could ever see. Flip before padding so the
            # zero padding stays at the bottom/right, as in training.
            passes.append(_run_padded(model, images.flip(-1), int(size_multiple), amp_dtype).flip(-1))
        return torch.stack(passes)


def predict_probs(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    size_multiple: int,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, C, H, W) images of any size -> (B, K, H, W) float32 class probabilities.

    ``model`` is any callable returning logits: an ``nn.Module``, a TorchScript module or the
    ``.module()`` of a ``torch.export`` program. With ``tta`` the probabilities are averaged over the
    identity and a horizontal (lateral) flip. ``amp_dtype`` (bf16 / fp16, see ``tpnet.core.device``) runs
    the network under autocast on the images' device; None runs it in the model's own precision.
    ``temperature``: the model's fitted pixel temperature (``temper_probs``); 1 leaves them as they are.
    """
    import torch

    with torch.inference_mode():
        passes = predict_passes(model, images, size_multiple, tta=tta, amp_dtype=amp_dtype)
        probs = passes[0] if passes.shape[0] == 1 else passes.mean(dim=0)
        return temper_probs(probs, temperature)


def temper_probs(probs, temperature: float):
    """Temperature scaling of (averaged) probabilities: softmax(log p / T) over dim 1, torch or numpy.

    On the log of the *mean* probability, not on each pass's logits: one rule for a single pass, a TTA
    average and a fold ensemble (whose logits are already log mean softmax), so the temperature fitted on
    validation predictions applies to exactly what evaluation and inference compute. T = 1 changes nothing."""
    if float(temperature) == 1.0:
        return probs
    if not float(temperature) > 0:
        raise ValueError(f"temperature must be > 0; got {temperature}")
    if isinstance(probs, np.ndarray):
        z = np.log(np.clip(probs, _TINY, None)) / np.float32(temperature)
        exp = np.exp(z - z.max(axis=1, keepdims=True))
        return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)
    import torch

    return torch.softmax(torch.log(probs.clamp_min(_TINY)) / float(temperature), dim=1)


_TINY = 1e-12  # log(0) guard: far below any probability a float32 softmax of finite logits resolves


def _run_padded_numpy(
    network: Callable[[np.ndarray], np.ndarray], images: np.ndarray, multiple: int
) -> np.ndarray:
    height, width = images.shape[-2:]
    pad_h, pad_w = pad_amounts(height, width, multiple)
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)))
    logits = np.asarray(network(np.ascontiguousarray(images, dtype=np.float32)))
    _check_logits(logits.shape, images.shape[0])
    logits = logits[..., :height, :width].astype(np.float32, copy=False)
    # Softmax over classes as torch.softmax computes it: shift by the maximum, exponentiate, normalise.
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def predict_passes_numpy(
    network: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    size_multiple: int,
    tta: bool = False,
) -> np.ndarray:
    """``predict_passes`` for a network on numpy arrays: (P, B, K, H, W) float32."""
    _check_inputs(images.shape, size_multiple)
    passes = [_run_padded_numpy(network, images, int(size_multiple))]
    if tta:  # the lateral flip only, before padding: see predict_passes
        passes.append(_run_padded_numpy(network, images[..., ::-1], int(size_multiple))[..., ::-1])
    return np.stack(passes)


def predict_probs_numpy(
    network: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    size_multiple: int,
    tta: bool = False,
    temperature: float = 1.0,
) -> np.ndarray:
    """``predict_probs`` for a network on numpy arrays (an ONNX model's ``OnnxNetwork``): (B, C, H, W)
    float32 images -> (B, K, H, W) float32 probabilities, padded, cropped, softmaxed, flip-averaged and
    tempered alike. Always full precision (an ONNX file fixes its own)."""
    passes = predict_passes_numpy(network, images, size_multiple, tta=tta)
    probs = passes[0] if passes.shape[0] == 1 else (passes[0] + passes[1]) / np.float32(2.0)
    return temper_probs(probs, temperature)


def _check_inputs(shape: tuple[int, ...], size_multiple: int) -> None:
    if len(shape) != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {shape}")
    if int(size_multiple) < 1:
        raise ValueError(f"size_multiple must be >= 1; got {size_multiple}")


def _check_logits(shape: tuple[int, ...], batch: int) -> None:
    if len(shape) != 4 or shape[0] != batch:
        raise ValueError(f"model returned logits of shape {shape}; expected (B, K, H, W)")
