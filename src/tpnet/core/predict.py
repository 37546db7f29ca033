"""Full-frame prediction: pad to the network's stride, run (under autocast when asked), crop back, softmax.

The one place every tool turns a model and images into class probabilities: validation, calibration,
evaluation and the inference tool all call ``predict_probs``, so they see exactly the same numbers.
Imports torch, numpy/OpenCV (via ``tpnet.core.encoding``) and the standard library only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tpnet.core.encoding import pad_amounts


def _run_padded(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    multiple: int,
    amp_dtype: torch.dtype | None,
) -> torch.Tensor:
    """Zero-pad bottom/right to ``multiple``, run, crop to the input size, softmax in float32."""
    height, width = images.shape[-2:]
    pad_h, pad_w = pad_amounts(height, width, multiple)
    padded = F.pad(images, (0, pad_w, 0, pad_h)) if pad_h or pad_w else images
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(padded)
    if logits.ndim != 4 or logits.shape[0] != images.shape[0]:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}; expected (B, K, H, W)")
    # float32 before softmax, outside autocast: bf16/fp16 logits lose the small probabilities.
    return torch.softmax(logits[..., :height, :width].float(), dim=1)


def predict_probs(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    size_multiple: int,
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """(B, C, H, W) images of any size -> (B, K, H, W) float32 class probabilities.

    ``model`` is any callable returning logits: an ``nn.Module``, a TorchScript module or the
    ``.module()`` of a ``torch.export`` program. With ``tta`` the probabilities are averaged over the
    identity and a horizontal (lateral) flip. ``amp_dtype`` (bf16 / fp16, see ``tpnet.core.device``) runs
    the network under autocast on the images' device; None runs it in the model's own precision.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W); got shape {tuple(images.shape)}")
    if int(size_multiple) < 1:
        raise ValueError(f"size_multiple must be >= 1; got {size_multiple}")
    with torch.inference_mode():
        probs = _run_padded(model, images, int(size_multiple), amp_dtype)
        if tta:
            # Only the lateral (left-right) flip is a valid ultrasound augmentation: the vertical axis
            # is depth, with the skin line on top and attenuation/shadowing growing downwards, so an
            # upside-down frame is not a scan the network could ever see. Flip before padding so the
            # zero padding stays at the bottom/right, as in training.
            flipped = _run_padded(model, images.flip(-1), int(size_multiple), amp_dtype).flip(-1)
            probs = (probs + flipped) / 2.0
    return probs
