"""One validation pass on full frames: loss, segmentation and trigger-point detection metrics.

Shares prediction (``predict_probs``) and post-processing with the evaluation and inference tools.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from tpnet.evaluation.metrics import FrameRecord, frame_record
from tpnet.inference.padding import predict_probs
from tpnet.inference.postprocess import (
    PostprocessParams,
    find_trigger_points,
    frame_trp_score,
    labels_from_probs,
)


def validate_frames(
    model: torch.nn.Module,
    frames: Sequence[dict],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    classes: Sequence[str],
    params: PostprocessParams,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    keep_predictions: int = 0,
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
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                probs = predict_probs(model, image, size_multiple)
            mask = frame["mask"][None].to(device)
            # log-probabilities are valid logits (softmax(log p) = p): no second forward pass for the loss.
            losses.append(float(loss_fn(torch.log(probs.clamp_min(1e-8)), mask)))
            probs_np = probs[0].cpu().numpy()
            gt = frame["mask"].numpy()
            spacing = float(frame["spacing_mm"])
            pred = labels_from_probs(probs_np, classes, params, spacing)
            pred_points = find_trigger_points(
                pred, spacing, classes, probs=probs_np, elasto_kpa=frame["elasto_kpa"]
            )
            records.append(
                frame_record(
                    pred,
                    gt,
                    pred_points,
                    find_trigger_points(gt, spacing, classes, elasto_kpa=frame["elasto_kpa"]),
                    sample_id=frame["sample_id"],
                    subject_id=frame["subject_id"],
                    num_classes=len(classes),
                    match_mm=params.match_mm,
                    frame_score=frame_trp_score(probs_np, classes),
                )
            )
            if len(kept) < keep_predictions:
                kept.append({**frame, "pred": pred.astype(np.uint8), "points": pred_points})
    finally:
        model.train(was_training)
    return records, losses, kept
