"""One validation pass on full frames: loss, segmentation and trigger-point detection metrics.

Shares prediction (``predict_probs``) and post-processing with the evaluation and inference tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tpnet.core.contract import ClassRoles
from tpnet.core.postprocess import PostprocessParams
from tpnet.core.predict import predict_probs
from tpnet.evaluation.evaluate import score_frame
from tpnet.evaluation.metrics import FrameRecord


def validate_frames(
    model: torch.nn.Module,
    frames: Sequence[dict],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    classes: Sequence[str],
    params: PostprocessParams,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    keep_predictions: int = 0,
    roles: ClassRoles | None = None,
) -> tuple[list[FrameRecord], list[float], list[dict]]:
    """Returns per-frame records, per-frame losses and up to ``keep_predictions`` frames with their label maps
    (for overlay images)."""
    was_training = model.training
    model.eval()
    records: list[FrameRecord] = []
    losses: list[float] = []
    kept: list[dict] = []
    size_multiple = int(model.size_multiple)
    try:
        for frame in frames:
            image = frame["image"][None].to(device)
            probs = predict_probs(model, image, size_multiple, amp_dtype=amp_dtype)
            # A source with unlabelled classes: its background is "background or unknown" to the loss too.
            mask = frame.get("loss_mask", frame["mask"])[None].to(device)
            # log-probabilities are valid logits (softmax(log p) = p): no second forward pass for the loss.
            losses.append(float(loss_fn(torch.log(probs.clamp_min(1e-8)), mask)))
            probs_np = probs[0].cpu().numpy()
            record, pred, pred_points = score_frame(
                probs_np,
                frame["mask"].numpy(),
                frame["elasto_kpa"],
                float(frame["spacing_mm"]),
                frame,
                classes,
                params,
                roles=roles,
            )
            records.append(record)
            if len(kept) < keep_predictions:
                kept.append({**frame, "pred": pred.astype(np.uint8), "points": pred_points})
    finally:
        model.train(was_training)
    return records, losses, kept
