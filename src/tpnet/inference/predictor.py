"""Streaming prediction: read -> encode -> resample -> batch -> network -> back to the frame's size -> TrPs.

Worker threads decode the next frames and post-process (and write) the previous batch while the network
runs; results come out in input order and about three batches of frames are ever in memory, however long
the run.

Each frame is also checked against the model's card (``tpnet.core.input_check``: named warnings, or with
``strict`` a rejection before the network runs); each detection gets its calibrated confidence and class
(``tpnet.core.confidence``), its spread across the test-time passes (``tpnet.core.uncertainty``), its
stiffness statistics, its depth below the skin line (``tpnet.core.skin_line``) and its planned needle path
(``tpnet.core.guidance``).

An ONNX model runs on numpy arrays (onnxruntime), a TorchScript / .pt2 model on torch tensors; torch is
imported only for the latter, so the base install (no torch) runs ONNX models.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np

from tpnet.core.confidence import Calibration
from tpnet.core.contract import trp_class_indices
from tpnet.core.encoding import resample_frame, resize
from tpnet.core.guidance import plan_guidance
from tpnet.core.input_check import FrameWarning, frame_statistics, frame_warnings, usable_reference
from tpnet.core.io import FrameReadError
from tpnet.core.model_file import LoadedModel
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import (
    PostprocessParams,
    TriggerPoint,
    find_trigger_points,
    labels_from_probs,
)
from tpnet.core.predict import predict_passes, predict_passes_numpy, temper_probs
from tpnet.core.skin_line import find_skin_row
from tpnet.core.uncertainty import pass_spread, trp_components
from tpnet.core.volume_postprocess import sweep_slice_params
from tpnet.inference.inputs import STRICT_NOTE, FrameInput, load_frame
from tpnet.inference.sweep_inputs import load_sweep_context

# A TrP's stiffness rests on the SWE pixels under it: below this share of valid pixels it is marked
# "low_coverage" (assumption: with less than half the nodule measured, its median may describe the rim, or a
# neighbour, more than the nodule).
MIN_SWE_COVERAGE = 0.5


class FrameRejectedError(FrameReadError):
    """``strict``: the frame raised named warnings; it is rejected before the network runs."""


@dataclass
class FramePrediction:
    """Everything needed to write one frame's outputs, at the frame's own size and spacing."""

    frame: FrameInput
    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    label_map: np.ndarray
    trigger_points: list[TriggerPoint]
    notes: list[str] = field(default_factory=list)  # what reading the frame assumed, for the summary
    warnings: list[FrameWarning] = field(default_factory=list)  # named out-of-distribution warnings
    p_trp_frame: float = float("nan")  # calibrated P(the frame holds a TrP)
    skin_row: int | None = None  # the skin line's row (depth origin); None: not found
    guidance: GuidanceParams | None = None  # the settings its needle paths were planned and judged by
    probs: np.ndarray | None = None  # (K, H, W) class probabilities at the frame's size (sweeps read them)


@dataclass
class FrameFailure:
    frame: FrameInput
    reason: str


@dataclass
class _Prepared:
    frame: FrameInput
    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    # At the model's spacing; the same arrays as above when the spacings agree. Encoded into network channels
    # only when its batch runs: read-ahead frames then hold 2 planes instead of 2 + 3 (memory per frame in flight).
    model_bmode: np.ndarray
    model_elasto_kpa: np.ndarray | None
    notes: list[str]  # what reading assumed (bit depth, clipping): reported with the frame
    box: tuple[int, int, int, int] | None = None  # the image region the network saw, in frame pixels
    warnings: list[FrameWarning] = field(default_factory=list)
    # A 2.5-D model's input (issue #17): the slice's neighbours' B-mode at the model's spacing, (2k, h, w).
    model_context: np.ndarray | None = None


class Predictor:
    def __init__(
        self,
        model: LoadedModel,
        device: str | None = None,
        batch_size: int = 4,
        tta: bool = True,
        strict: bool = False,
        guidance: GuidanceParams | None = None,
    ) -> None:
        """``device``: where the images go for a torch model (default: the model's own device). ``tta``: run
        the lateral-flip pass too (the default, as the calibration is fitted on it; the passes' spread is the
        detections' uncertainty). ``strict``: a frame with any named warning is rejected, not analysed.
        ``guidance``: how needle paths are planned and judged (default: the model file's, else the defaults)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.device = str(device or model.device)
        self.batch_size = batch_size
        self.tta = tta
        self.strict = strict
        self.classes = model.classes
        self.roles = model.roles  # which classes are TrPs / critical structures (issue #16)
        self.encoding = model.encoding
        self.params = PostprocessParams(**{k: float(v) for k, v in model.meta["postprocess"].items()})
        self.guidance = guidance if guidance is not None else model.guidance
        self.calibration = Calibration.from_meta(model.meta)
        card = model.meta.get("model_card")
        reference = card.get("input_reference") if isinstance(card, dict) else None
        self.input_reference = reference if usable_reference(reference) else None

    def working_spacing_mm(self, frame: FrameInput) -> float:
        """The frame's pixel size; for a frame without one, the model's (the network needs a scale to read
        it at; its millimetre figures are left empty by the writer)."""
        return frame.spacing_mm if frame.spacing_mm is not None else self.model.spacing_mm

    def prepare(self, frame: FrameInput) -> _Prepared:
        """Read one frame, keep its image region, resample that to the model's spacing (in a worker thread)."""
        notes: list[str] = []
        bmode, elasto_kpa = load_frame(frame, notes)
        box = _clip_box(frame.image_box, bmode.shape, frame.bmode_path)
        region_bmode, region_elasto = bmode, elasto_kpa
        if box is not None:  # the network sees the image region only, never the scanner's text and rulers
            x0, y0, x1, y1 = box
            region_bmode = bmode[y0:y1, x0:x1]
            region_elasto = None if elasto_kpa is None else elasto_kpa[y0:y1, x0:x1]
        model_bmode, model_elasto, _ = resample_frame(
            region_bmode, region_elasto, None, self.working_spacing_mm(frame), self.model.spacing_mm
        )
        model_context = None
        if self.encoding.context_slices:  # a 2.5-D model: the slice's neighbours, brought to the same grid
            neighbours = load_sweep_context(
                frame, self.encoding.context_slices, self.encoding.context_spacing_mm
            )
            model_context = np.stack([resize(plane, model_bmode.shape) for plane in neighbours])
        # The statistic test reads the B-mode plane exactly as the network will (norm, spacing, region).
        statistics = frame_statistics(self.encoding.encode(model_bmode, None, context=model_context)[0])
        warnings = frame_warnings(
            spacing_mm=frame.spacing_mm,
            model_spacing_mm=self.model.spacing_mm,
            shape=region_bmode.shape,
            has_swe=region_elasto is not None and bool(np.isfinite(region_elasto).any()),
            channels=self.encoding.channels,
            statistics=statistics,
            reference=self.input_reference,
        )
        if warnings and self.strict:
            codes = "; ".join(f"{w.code} ({w.message})" for w in warnings)
            raise FrameRejectedError(f"{frame.name}: {STRICT_NOTE}: {codes}")
        return _Prepared(
            frame, bmode, elasto_kpa, model_bmode, model_elasto, notes, box, warnings, model_context
        )

    def run(
        self,
        frames: Iterable[FrameInput],
        workers: int = 1,
        finish: Callable[[FramePrediction], None] | None = None,
    ) -> Iterator[FramePrediction | FrameFailure]:
        """Yield one result per frame, in input order; a frame that cannot be read yields a FrameFailure.

        ``workers`` threads read the next frames and post-process the last batch (and run ``finish`` on each
        prediction, e.g. writing its files) while the network runs on the current batch: the network never
        waits for disk or OpenCV. An exception from ``finish`` is raised here, at that frame.
        """
        # One batch ahead (+ one frame per reader) keeps the readers busy while the network runs, and bounds
        # the frames in memory at about three batches (reading, in the network, post-processing).
        read_ahead = self.batch_size + max(1, workers)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tpnet-io") as pool:
            reads: deque[tuple[FrameInput, Future[_Prepared]]] = deque()
            results: deque[Future[FramePrediction | FrameFailure]] = deque()  # in input order
            batch: list[_Prepared | FrameFailure] = []

            def collect() -> Iterator[FramePrediction | FrameFailure]:
                batch.append(self._read_result(*reads.popleft()))
                if sum(isinstance(b, _Prepared) for b in batch) >= self.batch_size:
                    previous = len(results)
                    self._flush(batch, results, pool, finish)
                    # Hand out the batch before this one: it was post-processed while this one ran.
                    for _ in range(previous):
                        yield results.popleft().result()

            try:
                for frame in frames:
                    reads.append((frame, pool.submit(self.prepare, frame)))
                    if len(reads) >= read_ahead:
                        yield from collect()
                while reads:
                    yield from collect()
                self._flush(batch, results, pool, finish)
                while results:
                    yield results.popleft().result()
            except BaseException:  # closed early (the caller stopped, Ctrl-C): drop the queued frames' work
                pool.shutdown(wait=False, cancel_futures=True)
                raise

    @staticmethod
    def _read_result(frame: FrameInput, future: Future[_Prepared]) -> _Prepared | FrameFailure:
        try:
            return future.result()
        except FrameReadError as exc:
            return FrameFailure(frame, str(exc))
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            return FrameFailure(frame, f"{frame.bmode_path}: cannot read ({type(exc).__name__}: {exc})")

    def _flush(
        self,
        batch: list[_Prepared | FrameFailure],
        results: deque[Future[FramePrediction | FrameFailure]],
        pool: ThreadPoolExecutor,
        finish: Callable[[FramePrediction], None] | None,
    ) -> None:
        """Run the network on the collected frames, one call per distinct shape (no cross-frame padding, so
        a frame's result never depends on its batch-mates); queue their post-processing, in input order."""
        out: dict[int, FrameFailure | tuple[_Prepared, np.ndarray, np.ndarray]] = {
            i: b for i, b in enumerate(batch) if isinstance(b, FrameFailure)
        }
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, b in enumerate(batch):
            if isinstance(b, _Prepared):
                by_shape.setdefault(b.model_bmode.shape, []).append(i)
        for indices in by_shape.values():
            encoded = [
                self.encoding.encode(b.model_bmode, b.model_elasto_kpa, context=b.model_context)
                for b in (batch[i] for i in indices)
            ]
            images = np.stack(encoded)
            del encoded
            try:
                probs, trp_passes = self.probs_and_passes(images)
            except Exception as exc:  # e.g. a frame too small for the network, or out of memory
                for i in indices:
                    reason = f"{batch[i].frame.name}: the network failed on this frame ({type(exc).__name__}: {exc})"
                    out[i] = FrameFailure(batch[i].frame, reason)
                continue
            for i, frame_probs, frame_passes in zip(indices, probs, trp_passes, strict=True):
                out[i] = (batch[i], frame_probs, frame_passes)
        batch.clear()
        for i in sorted(out):
            item = out[i]
            if isinstance(item, FrameFailure):
                results.append(_done(item))
            else:
                results.append(pool.submit(self._postprocess_and_finish, *item, finish))

    def probs(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) encoded frames -> (B, K, H, W) float32 probabilities, by the model's runtime."""
        return self.probs_and_passes(images)[0]

    def probs_and_passes(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, C, H, W) encoded frames -> ((B, K, H, W) probabilities: the passes' mean, tempered with the
        model's temperature; (B, P, H, W) each pass's summed TrP probability, tempered alike), float32."""
        multiple = self.model.size_multiple
        if self.model.kind == "onnx":
            passes = predict_passes_numpy(self.model.module, images, multiple, tta=self.tta)
        else:
            import torch

            tensor = torch.from_numpy(images).to(self.device)
            passes = predict_passes(self.model.module, tensor, multiple, tta=self.tta).float().cpu().numpy()
        temperature = self.calibration.temperature
        mean = passes[0] if passes.shape[0] == 1 else passes.mean(axis=0)
        probs = temper_probs(mean, temperature)
        trp = trp_class_indices(self.classes, self.roles)
        trp_passes = np.stack([temper_probs(p, temperature)[:, trp].sum(axis=1) for p in passes], axis=1)
        return probs, trp_passes.astype(np.float32, copy=False)

    def _postprocess_and_finish(
        self,
        item: _Prepared,
        probs: np.ndarray,
        trp_passes: np.ndarray,
        finish: Callable[[FramePrediction], None] | None,
    ) -> FramePrediction | FrameFailure:
        try:
            prediction = self._postprocess(item, probs, trp_passes)
        except Exception as exc:
            return FrameFailure(item.frame, f"{item.frame.name}: post-processing failed ({exc})")
        if finish is not None:
            finish(prediction)
        return prediction

    def _postprocess(self, item: _Prepared, probs: np.ndarray, trp_passes: np.ndarray) -> FramePrediction:
        # Back to the frame's own pixels before thresholding: masks come out at the input's size and
        # positions/areas use the frame's own spacing, not the model's.
        height, width = item.bmode.shape
        x0, y0, x1, y1 = item.box if item.box is not None else (0, 0, width, height)
        if item.box is None:
            probs = resize_probs(probs, item.bmode.shape)
        else:  # the region's result placed back into the whole frame; outside it, background
            region = resize_probs(probs, (y1 - y0, x1 - x0))
            probs = np.zeros((region.shape[0], *item.bmode.shape), np.float32)
            probs[0] = 1.0
            probs[:, y0:y1, x0:x1] = region
        passes = np.zeros((trp_passes.shape[0], height, width), np.float32)
        for p, plane in enumerate(trp_passes):
            passes[p, y0:y1, x0:x1] = cv2.resize(plane, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
        spacing_mm = self.working_spacing_mm(item.frame)
        # A sweep's slice keeps the tips of nodules: its specks are dropped by volume, in 3-D.
        params = sweep_slice_params(self.params) if item.frame.kind == "sweep" else self.params
        label_map = labels_from_probs(probs, self.classes, params, spacing_mm, self.roles)
        points = find_trigger_points(
            label_map, spacing_mm, self.classes, probs=probs, elasto_kpa=item.elasto_kpa,
            min_area_mm2=self.params.min_area_mm2, roles=self.roles,
        )  # fmt: skip
        components, ids = trp_components(label_map, self.classes, points, self.roles)
        region_skin = find_skin_row(item.bmode[y0:y1, x0:x1])
        skin_row = None if region_skin is None else region_skin + y0
        for point, spread in zip(points, pass_spread(passes, components, ids, spacing_mm), strict=True):
            # find_trigger_points filled the raw confidence and the stiffness median / SD / SWE coverage.
            point.confidence_sd, point.centroid_sd_mm = spread.confidence_sd, spread.centroid_sd_mm
            if skin_row is not None:
                point.depth_from_skin_mm = (point.y_px - skin_row) * spacing_mm
        # Each TrP's needle path and its distances to nerves and vessels, on the probabilities as well as the
        # labels, entering inside the image region; skin_row None: at the region's top row.
        plan_guidance(
            points, label_map, probs, self.classes, self.roles, spacing_mm, skin_row, self.guidance, item.box
        )
        self.calibration.apply(points)  # calibrated confidence, p_active, reported_class
        p_frame = float(self.calibration.frame_probability(probs, self.classes, points, self.roles))
        return FramePrediction(
            item.frame, item.bmode, item.elasto_kpa, label_map, points, item.notes,
            warnings=item.warnings, p_trp_frame=p_frame, skin_row=skin_row, guidance=self.guidance,
            probs=probs if item.frame.kind == "sweep" else None,
        )  # fmt: skip


def stiffness_note(point: TriggerPoint) -> str:
    """ "no_swe" (no SWE over it), "low_coverage" (under ``MIN_SWE_COVERAGE`` of it measured) or ""."""
    coverage = point.swe_coverage
    if coverage != coverage or coverage == 0.0:
        return "no_swe"
    return "low_coverage" if coverage < MIN_SWE_COVERAGE else ""


def _clip_box(
    box: tuple[int, int, int, int] | None, shape: tuple[int, ...], path: object
) -> tuple[int, int, int, int] | None:
    """The box inside the frame; None when there is none or it covers the whole frame."""
    if box is None:
        return None
    height, width = shape[:2]
    x0, y0 = max(0, box[0]), max(0, box[1])
    x1, y1 = min(width, box[2]), min(height, box[3])
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise FrameReadError(f"{path}: image region {box} lies outside the {width}x{height} frame")
    return None if (x0, y0, x1, y1) == (0, 0, width, height) else (x0, y0, x1, y1)


def _done(value: FrameFailure) -> Future[FramePrediction | FrameFailure]:
    future: Future[FramePrediction | FrameFailure] = Future()
    future.set_result(value)
    return future


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W) bilinear, renormalised so each pixel still sums to one."""
    if probs.shape[1:] == tuple(shape):
        return probs
    height, width = shape
    planes = [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs]
    out = np.stack(planes).astype(np.float32)
    return out / np.clip(out.sum(axis=0, keepdims=True), 1e-6, None)
