"""Evaluation loop: full frames through the same prediction, calibration and post-processing as inference,
then pooled metrics (with calibration errors before and after), subject-level bootstrap CIs and an atomic
``metrics.json``."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tpnet.core.atomic import atomic_write_text
from tpnet.core.confidence import Calibration
from tpnet.core.contract import ClassRoles, critical_class_indices, trp_class_indices
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import (
    PostprocessParams,
    TriggerPoint,
    find_trigger_points,
    frame_trp_score,
    labels_from_probs,
)
from tpnet.core.predict import predict_probs, temper_probs
from tpnet.core.skin_line import find_skin_row
from tpnet.core.volume_postprocess import sweep_slice_params
from tpnet.evaluation import calibration_metrics
from tpnet.evaluation.critical_detection import critical_detection_counts
from tpnet.evaluation.guidance_metrics import frame_guidance_counts
from tpnet.evaluation.metrics import (
    FrameRecord,
    aggregate,
    bootstrap_ci,
    calibration_totals,
    frame_record,
    json_safe,
    match_points,
    undefined_reasons,
)
from tpnet.evaluation.sweeps import SweepScorer

FRAME_KEYS: tuple[str, ...] = ("image", "mask", "elasto_kpa", "spacing_mm", "sample_id", "subject_id")


def _as_numpy(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def _check_frame(frame: dict) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None, float]:
    sample_id = frame.get("sample_id", "<no sample_id>")
    missing = [k for k in FRAME_KEYS if k not in frame]
    if missing:
        raise ValueError(f"{sample_id}: frame lacks key(s) {missing}")
    image = frame["image"]
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        raise ValueError(f"{sample_id}: image must be a (C, H, W) tensor")
    mask = _as_numpy(frame["mask"])
    if mask.shape != tuple(image.shape[1:]):
        raise ValueError(
            f"{sample_id}: mask shape {mask.shape} differs from image shape {tuple(image.shape[1:])}"
        )
    elasto = frame["elasto_kpa"]
    if elasto is not None:
        elasto = _as_numpy(elasto).astype(np.float32, copy=False)
        if elasto.shape != mask.shape:
            raise ValueError(
                f"{sample_id}: elasto_kpa shape {elasto.shape} differs from mask shape {mask.shape}"
            )
    spacing_mm = float(frame["spacing_mm"])
    if not spacing_mm > 0:
        raise ValueError(f"{sample_id}: spacing_mm must be > 0; got {spacing_mm}")
    return image, mask.astype(np.int64), elasto, spacing_mm


def score_frame(
    probs: np.ndarray,
    gt_labels: np.ndarray,
    elasto_kpa: np.ndarray | None,
    spacing_mm: float,
    frame: dict,
    classes: Sequence[str],
    params: PostprocessParams,
    gt_points: list[TriggerPoint] | None = None,
    calibration: Calibration | None = None,
    raw_probs: np.ndarray | None = None,
    roles: ClassRoles | None = None,
    guidance: GuidanceParams | None = None,
) -> tuple[FrameRecord, np.ndarray, list[TriggerPoint]]:
    """Post-process one frame's (K, H, W) probabilities and score them against its label map: the one path
    shared by evaluation, validation during training and post-processing calibration.

    With ``calibration`` (``probs`` already tempered by it, ``raw_probs`` the same before tempering), the
    predicted TrPs get their calibrated confidence, p_active and reported class, the frame score is the
    calibrated frame probability, and the record carries calibration counts (before and after).
    The record always counts the critical structures (nerves, vessels: ``critical_detection``) found and missed.
    With ``guidance``, each predicted TrP's needle path is planned on the prediction as tpnet-infer plans it and
    re-measured on the true critical structures (``guidance_metrics``); None skips it (it costs a few ms a
    frame: see ``evaluate``).
    A frame of a source that does not label some classes (``frame["unlabelled_classes"]``, multi-source
    training) is scored only on the classes it labels: see ``_without_unlabelled``.
    Returns the record, the predicted label map and the predicted trigger points."""
    pred_labels = labels_from_probs(probs, classes, params, spacing_mm, roles)
    pred_points = find_trigger_points(
        pred_labels, spacing_mm, classes, probs=probs, elasto_kpa=elasto_kpa, roles=roles
    )
    if gt_points is None:
        gt_points = find_trigger_points(gt_labels, spacing_mm, classes, elasto_kpa=elasto_kpa, roles=roles)
    raw_frame_score = frame_trp_score(probs, classes, roles)
    frame_score, counts = raw_frame_score, None
    if calibration is not None:
        calibration.apply(pred_points)
        frame_score = calibration.frame_probability(probs, classes, pred_points, roles)
        matched = {p for p, _ in match_points(pred_points, gt_points, params.match_mm).pairs}
        counts = calibration_metrics.frame_counts(
            probs if raw_probs is None else raw_probs,
            probs,
            gt_labels,
            trp_class_indices(classes, roles),
            [(p.raw_confidence, p.confidence, i in matched) for i, p in enumerate(pred_points)],
            raw_frame_score,
            frame_score,
            bool(gt_points),
        )
    critical = critical_class_indices(classes, roles)
    guidance_counts = None
    if guidance is not None:
        skin_row = frame_skin_row(frame)
        guidance_counts = frame_guidance_counts(
            pred_labels, probs, gt_labels, pred_points, classes, spacing_mm, skin_row, guidance, roles
        )
    record = frame_record(
        pred_labels,
        gt_labels,
        pred_points,
        gt_points,
        sample_id=frame["sample_id"],
        subject_id=frame["subject_id"],
        num_classes=len(classes),
        match_mm=params.match_mm,
        frame_score=frame_score,
        calibration=counts,
        critical=critical,
        critical_counts=critical_detection_counts(
            pred_labels, gt_labels, critical, len(classes), spacing_mm, params.match_mm
        ),
        guidance=guidance_counts,
    )
    unlabelled = [int(k) for k in frame.get("unlabelled_classes", ())]
    if unlabelled:
        record = _without_unlabelled(record, unlabelled, trp_class_indices(classes, roles))
    return record, pred_labels, pred_points


def frame_skin_row(frame: dict) -> int | None:
    """The skin row a needle path starts from: ``frame["skin_row"]`` when the frame says, else ``find_skin_row``
    on the image's B-mode channel (channel 0), as tpnet-infer finds it on the B-mode. A z-scored channel
    (``bmode_norm``) is brought back to [0, 1] by its own range first: the rule is a half-maximum, which that
    scaling leaves where it is; only its minimum contrast is then relative to the frame's range. None: the top
    of the image."""
    if "skin_row" in frame:
        return None if frame["skin_row"] is None else int(frame["skin_row"])
    bmode = _as_numpy(frame["image"][0]).astype(np.float32, copy=False)
    low, high = float(bmode.min()), float(bmode.max())
    if (low < 0.0 or high > 1.0) and high > low:
        bmode = (bmode - low) / (high - low)
    return find_skin_row(bmode)


def _without_unlabelled(record: FrameRecord, unlabelled: Sequence[int], trp: Sequence[int]) -> FrameRecord:
    """The record of a frame whose source does not label ``unlabelled`` (classes it shows as background):
    those classes' pixel counts become 0 (a prediction there is neither right nor wrong), and when any TrP
    class is unlabelled the frame says nothing about detection (no TrP counts, no frame score for the AUC).
    An unlabelled critical class has no structure counts; with any critical class unlabelled the true critical
    mask is incomplete, so the frame has no guidance counts either."""
    for name in ("tp_px", "fp_px", "fn_px"):
        counts = getattr(record, name).copy()  # np.diag gave a read-only view
        counts[list(unlabelled)] = 0
        setattr(record, name, counts)
    for counts in (record.critical_tp, record.critical_fp, record.critical_fn):
        if counts is not None:
            counts[list(unlabelled)] = 0
    if record.guidance is not None and set(unlabelled) & set(record.critical):
        record.guidance = np.zeros_like(record.guidance)
    if set(unlabelled) & set(trp):
        zeros = np.zeros_like(record.det_tp)
        record.det_tp, record.det_fp, record.det_fn = zeros, zeros.copy(), zeros.copy()
        record.loc_errors_mm, record.class_agree, record.class_matched = [], 0, 0
        record.frame_score = float("nan")
        record.has_gt_trp, record.n_gt_trp, record.n_pred_trp = False, 0, 0
        record.active_matched = record.active_agree = record.latent_matched = record.latent_agree = 0
        if record.calibration is not None:
            record.calibration = np.zeros_like(record.calibration)
    return record


def evaluate(
    model: Callable[[torch.Tensor], torch.Tensor],
    frames: Iterable[dict],
    classes: Sequence[str],
    size_multiple: int,
    params: PostprocessParams,
    device: str | torch.device = "cpu",
    tta: bool = False,
    amp_dtype: torch.dtype | None = None,
    calibration: Calibration | None = None,
    roles: ClassRoles | None = None,
    guidance: GuidanceParams | None = None,
    sweeps: SweepScorer | None = None,
) -> tuple[dict[str, float], list[FrameRecord]]:
    """Predict every frame at full size (batch 1, padded to ``size_multiple``), calibrate and score it.
    ``sweeps``: also score the slices of each sweep as 3-D trigger points (read ``sweeps.records`` after).

    ``calibration``: the model's (``Calibration.from_meta``); None = identity, whose "after" figures equal the
    "before" ones (calibration errors are measured either way). ``guidance``: measure the needle guidance
    (``guidance_metrics``) with these settings; None skips it.

    ``model`` must already live on ``device``; an ``nn.Module`` is switched to eval mode for the
    loop and back to its previous mode afterwards (so the training loop can call this directly).
    """
    device = torch.device(device)
    calibration = calibration if calibration is not None else Calibration()
    was_training = getattr(model, "training", None)
    if isinstance(model, torch.nn.Module):
        model.eval()
    records = []
    try:
        for frame in frames:
            image, gt_labels, elasto, spacing_mm = _check_frame(frame)
            raw = predict_probs(model, image[None].to(device), size_multiple, tta=tta, amp_dtype=amp_dtype)
            if raw.shape[1] != len(classes):
                raise ValueError(
                    f"{frame['sample_id']}: model gives {raw.shape[1]} classes, expected {len(classes)}"
                )
            probs = temper_probs(raw, calibration.temperature)[0].cpu().numpy()
            raw = raw[0].cpu().numpy()
            record, pred_labels, _ = score_frame(
                probs,
                gt_labels,
                elasto,
                spacing_mm,
                frame,
                classes,
                params,
                calibration=calibration,
                raw_probs=raw,
                roles=roles,
                guidance=guidance,
            )
            records.append(record)
            if sweeps is not None and frame.get("volume_id") is not None:
                # As tpnet-infer labels a sweep's slices: no per-slice area cut (the 3-D volume cut instead).
                slice_labels = labels_from_probs(
                    probs, classes, sweep_slice_params(params), spacing_mm, roles
                )
                sweeps.add(frame, slice_labels, gt_labels)
        if sweeps is not None:
            sweeps.finish()
    finally:
        if isinstance(model, torch.nn.Module) and was_training is not None:
            model.train(was_training)
    return aggregate(records, classes), records


def evaluation_report(
    records: Sequence[FrameRecord], classes: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict:
    """Point estimates plus a ``ci95`` sub-dict of subject-bootstrap intervals: what metrics.json holds. A metric
    with nothing to measure (F1 of a split without a true trigger point, ...) is NaN, null in the file, and
    ``undefined`` says why."""
    point = aggregate(records, classes)
    report: dict[str, Any] = dict(point)
    ci = bootstrap_ci(records, classes, n_boot=n_boot, seed=seed, level=0.95)
    report["ci95"] = {key: [lo, hi] for key, (lo, hi) in ci.items()}
    report["undefined"] = undefined_reasons(point)
    totals = calibration_totals(records, classes)
    if totals is not None:
        curves = calibration_metrics.reliability_report(totals)
        report["reliability"] = {"n_bins": calibration_metrics.N_BINS, **curves}
        # What a perfectly calibrated model would score on this few detections / frames (docs/confidence.md).
        for level in ("detection", "frame"):
            report[f"{level}_ece_floor"] = calibration_metrics.ece_noise_floor(totals, level, seed=seed)
    report["bootstrap"] = {"n_boot": n_boot, "seed": seed, "unit": "subject"}
    return report


def metric_values(report: dict, prefix: str) -> dict[str, float]:
    """A report's numbers for MLflow: the metrics worth a curve, without counts (n_frames, ...), flags or nested
    records; the calibration errors also with their CI bounds (``<name>_ci_low`` / ``_ci_high``), which MLflow
    cannot nest. Shared by tpnet-train and tpnet-eval."""
    values = {
        prefix + k: float(v)
        for k, v in report.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and not k.startswith("n_")
    }
    for key, bounds in (report.get("ci95") or {}).items():
        if key.endswith(("_ece", "_ece_raw", "_brier", "_brier_raw")) and bounds and None not in bounds:
            values[f"{prefix}{key}_ci_low"], values[f"{prefix}{key}_ci_high"] = (float(b) for b in bounds)
    return values


def save_metrics_json(path: str | Path, report: dict) -> None:
    """Write ``report`` atomically (temp file + os.replace), NaN as null."""
    text = json.dumps(json_safe(report), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_text(path, text + "\n")
