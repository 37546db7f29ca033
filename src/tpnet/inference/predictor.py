"""Streaming prediction: read -> encode -> resample -> batch -> network -> back to the frame's size -> TrPs.

Worker threads decode the next frames and post-process (and write) the previous batch while the network
runs; results come out in input order and about three batches of frames are ever in memory, however long
the run.

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

from tpnet.core.encoding import resample_frame
from tpnet.core.io import FrameReadError
from tpnet.core.model_file import LoadedModel
from tpnet.core.postprocess import (
    PostprocessParams,
    TriggerPoint,
    find_trigger_points,
    labels_from_probs,
)
from tpnet.core.predict import predict_probs, predict_probs_numpy
from tpnet.inference.inputs import FrameInput, load_frame


@dataclass
class FramePrediction:
    """Everything needed to write one frame's outputs, at the frame's own size and spacing."""

    frame: FrameInput
    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    label_map: np.ndarray
    trigger_points: list[TriggerPoint]
    notes: list[str] = field(default_factory=list)  # what reading the frame assumed, for the summary


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


class Predictor:
    def __init__(
        self, model: LoadedModel, device: str | None = None, batch_size: int = 4, tta: bool = False
    ) -> None:
        """``device``: where the images go for a torch model (default: the model's own device)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.device = str(device or model.device)
        self.batch_size = batch_size
        self.tta = tta
        self.classes = model.classes
        self.encoding = model.encoding
        self.params = PostprocessParams(**{k: float(v) for k, v in model.meta["postprocess"].items()})

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
        return _Prepared(frame, bmode, elasto_kpa, model_bmode, model_elasto, notes, box)

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
        out: dict[int, FrameFailure | tuple[_Prepared, np.ndarray]] = {
            i: b for i, b in enumerate(batch) if isinstance(b, FrameFailure)
        }
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, b in enumerate(batch):
            if isinstance(b, _Prepared):
                by_shape.setdefault(b.model_bmode.shape, []).append(i)
        for indices in by_shape.values():
            encoded = [self.encoding.encode(batch[i].model_bmode, batch[i].model_elasto_kpa) for i in indices]
            images = np.stack(encoded)
            del encoded
            try:
                probs = self.probs(images)
            except Exception as exc:  # e.g. a frame too small for the network, or out of memory
                for i in indices:
                    reason = f"{batch[i].frame.name}: the network failed on this frame ({type(exc).__name__}: {exc})"
                    out[i] = FrameFailure(batch[i].frame, reason)
                continue
            for i, frame_probs in zip(indices, probs, strict=True):
                out[i] = (batch[i], frame_probs)
        batch.clear()
        for i in sorted(out):
            item = out[i]
            if isinstance(item, FrameFailure):
                results.append(_done(item))
            else:
                results.append(pool.submit(self._postprocess_and_finish, *item, finish))

    def probs(self, images: np.ndarray) -> np.ndarray:
        """(B, C, H, W) encoded frames -> (B, K, H, W) float32 probabilities, by the model's runtime."""
        multiple = self.model.size_multiple
        if self.model.kind == "onnx":
            return predict_probs_numpy(self.model.module, images, multiple, tta=self.tta)
        import torch

        tensor = torch.from_numpy(images).to(self.device)
        return predict_probs(self.model.module, tensor, multiple, tta=self.tta).float().cpu().numpy()

    def _postprocess_and_finish(
        self, item: _Prepared, probs: np.ndarray, finish: Callable[[FramePrediction], None] | None
    ) -> FramePrediction | FrameFailure:
        try:
            prediction = self._postprocess(item, probs)
        except Exception as exc:
            return FrameFailure(item.frame, f"{item.frame.name}: post-processing failed ({exc})")
        if finish is not None:
            finish(prediction)
        return prediction

    def _postprocess(self, item: _Prepared, probs: np.ndarray) -> FramePrediction:
        # Back to the frame's own pixels before thresholding: masks come out at the input's size and
        # positions/areas use the frame's own spacing, not the model's.
        if item.box is None:
            probs = resize_probs(probs, item.bmode.shape)
        else:  # the region's result placed back into the whole frame; outside it, background
            x0, y0, x1, y1 = item.box
            region = resize_probs(probs, (y1 - y0, x1 - x0))
            probs = np.zeros((region.shape[0], *item.bmode.shape), np.float32)
            probs[0] = 1.0
            probs[:, y0:y1, x0:x1] = region
        spacing_mm = self.working_spacing_mm(item.frame)
        label_map = labels_from_probs(probs, self.classes, self.params, spacing_mm)
        points = find_trigger_points(
            label_map, spacing_mm, self.classes, probs=probs, elasto_kpa=item.elasto_kpa,
            min_area_mm2=self.params.min_area_mm2,
        )  # fmt: skip
        return FramePrediction(item.frame, item.bmode, item.elasto_kpa, label_map, points, item.notes)


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
