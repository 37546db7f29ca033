"""Choose the detection threshold, minimum trigger-point area and minimum mean TrP probability on the
validation split.

nnU-Net likewise decides its post-processing on validation data. The probabilities are computed once; each
(threshold, min_area_mm2, min_mean_prob) setting only re-runs the cheap post-processing. The winner maximises
validation TrP detection F1 (ties: the setting closest to the configured one), is stored in the checkpoint's
metadata and so travels into metrics.json, exported models and tpnet-infer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace

import torch

from tpnet.core.postprocess import PostprocessParams, find_trigger_points
from tpnet.core.predict import predict_probs
from tpnet.evaluation.evaluate import score_frame
from tpnet.evaluation.metrics import aggregate


@torch.no_grad()
def calibrate_postprocess(
    model: torch.nn.Module,
    frames: Iterable[dict],
    classes: Sequence[str],
    base: PostprocessParams,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    thresholds: Sequence[float],
    min_areas_mm2: Sequence[float],
    min_mean_probs: Sequence[float] = (0.0,),
) -> tuple[PostprocessParams, list[dict]]:
    """Returns the best parameters and the whole grid (one dict per setting) for the record."""
    model.eval()
    cached = []
    for frame in frames:
        image = frame["image"][None].to(device)
        probs = predict_probs(model, image, int(model.size_multiple), amp_dtype=amp_dtype)
        gt = frame["mask"].numpy()
        spacing = float(frame["spacing_mm"])
        gt_points = find_trigger_points(gt, spacing, classes, elasto_kpa=frame["elasto_kpa"])
        cached.append((probs[0].cpu().numpy(), gt, spacing, gt_points, frame))
    if not cached:
        return base, []

    # Every pixel of a component reaches the threshold, so a minimum mean at or under it drops nothing: such a
    # setting is the same as 0 and is scored (and recorded) once, as 0.
    settings = dict.fromkeys(
        (float(t), float(a), float(m) if float(m) > float(t) else 0.0)
        for t in thresholds
        for a in min_areas_mm2
        for m in min_mean_probs
    )
    grid = []
    for threshold, min_area, min_mean_prob in settings:
        params = replace(base, threshold=threshold, min_area_mm2=min_area, min_mean_prob=min_mean_prob)
        records = [
            score_frame(probs, gt, frame["elasto_kpa"], spacing, frame, classes, params, gt_points)[0]
            for probs, gt, spacing, gt_points, frame in cached
        ]
        metrics = aggregate(records, classes)
        grid.append(
            {
                "threshold": params.threshold,
                "min_area_mm2": params.min_area_mm2,
                "min_mean_prob": params.min_mean_prob,
                **{k: metrics[k] for k in ("det_f1", "det_precision", "det_recall", "dice_mean")},
            }
        )

    def rank(row: dict) -> tuple[float, float]:
        distance = (
            abs(row["threshold"] - base.threshold)
            + abs(row["min_area_mm2"] - base.min_area_mm2) / 10
            + abs(row["min_mean_prob"] - base.min_mean_prob)
        )
        f1 = row["det_f1"]
        return (f1 if f1 == f1 else -1.0, -distance)  # NaN (nothing to find) ranks below every F1

    if all(row["det_f1"] != row["det_f1"] for row in grid):
        return base, grid  # no setting can be judged: keep the configured post-processing
    best = max(grid, key=rank)
    chosen = {k: best[k] for k in ("threshold", "min_area_mm2", "min_mean_prob")}
    return replace(base, **chosen), grid
