"""Streaming prediction: read -> encode -> resample -> batch -> network -> back to the frame's size -> TrPs.

Reader threads decode the next frames while the network runs; results come out in input order and
only ``batch_size`` + a small read-ahead of frames are ever in memory, however long the run.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from tpnet.data.encoding import resample_frame
from tpnet.data.io import FrameReadError
from tpnet.inference.inputs import FrameInput, load_frame
from tpnet.inference.model_file import LoadedModel
from tpnet.inference.padding import predict_probs
from tpnet.inference.postprocess import (
    PostprocessParams,
    TriggerPoint,
    find_trigger_points,
    labels_from_probs,
)


@dataclass
class FramePrediction:
    """Everything needed to write one frame's outputs, at the frame's own size and spacing."""

    frame: FrameInput
    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    label_map: np.ndarray
    trigger_points: list[TriggerPoint]


@dataclass
class FrameFailure:
    frame: FrameInput
    reason: str


@dataclass
class _Prepared:
    frame: FrameInput
    bmode: np.ndarray
    elasto_kpa: np.ndarray | None
    image: np.ndarray  # (C, h, w) encoded at the model's spacing


class Predictor:
    def __init__(
        self, model: LoadedModel, device: str | torch.device = "cpu", batch_size: int = 4, tta: bool = False
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        self.model = model
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.tta = tta
        self.classes = model.classes
        self.encoding = model.encoding
        self.params = PostprocessParams(**{k: float(v) for k, v in model.meta["postprocess"].items()})

    def prepare(self, frame: FrameInput) -> _Prepared:
        """Read, encode and resample one frame (runs in a reader thread)."""
        bmode, elasto_kpa = load_frame(frame)
        small_bmode, small_elasto, _ = resample_frame(
            bmode, elasto_kpa, None, frame.spacing_mm, self.model.spacing_mm
        )
        return _Prepared(frame, bmode, elasto_kpa, self.encoding.encode(small_bmode, small_elasto))

    def run(self, frames: Iterable[FrameInput], workers: int = 1) -> Iterator[FramePrediction | FrameFailure]:
        """Yield one result per frame, in input order; a frame that cannot be read yields a FrameFailure."""
        read_ahead = max(2 * self.batch_size, workers)
        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="tpnet-read") as pool:
            pending: deque[tuple[FrameInput, Future[_Prepared]]] = deque()
            batch: list[_Prepared | FrameFailure] = []
            for frame in frames:
                pending.append((frame, pool.submit(self.prepare, frame)))
                if len(pending) >= read_ahead:
                    yield from self._collect(pending.popleft(), batch)
            while pending:
                yield from self._collect(pending.popleft(), batch)
            yield from self._flush(batch)

    def _collect(
        self, item: tuple[FrameInput, Future[_Prepared]], batch: list[_Prepared | FrameFailure]
    ) -> Iterator[FramePrediction | FrameFailure]:
        frame, future = item
        try:
            batch.append(future.result())
        except FrameReadError as exc:
            batch.append(FrameFailure(frame, str(exc)))
        except Exception as exc:  # a decoder bug on one odd file must not stop the run
            batch.append(
                FrameFailure(frame, f"{frame.bmode_path}: cannot read ({type(exc).__name__}: {exc})")
            )
        if sum(isinstance(b, _Prepared) for b in batch) >= self.batch_size:
            yield from self._flush(batch)

    def _flush(self, batch: list[_Prepared | FrameFailure]) -> Iterator[FramePrediction | FrameFailure]:
        """Predict the collected frames, one network call per distinct shape (no cross-frame padding,
        so a frame's result never depends on its batch-mates), and yield results in order."""
        results: dict[int, FramePrediction | FrameFailure] = {
            i: b for i, b in enumerate(batch) if isinstance(b, FrameFailure)
        }
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, b in enumerate(batch):
            if isinstance(b, _Prepared):
                by_shape.setdefault(b.image.shape, []).append(i)
        for indices in by_shape.values():
            images = torch.from_numpy(np.stack([batch[i].image for i in indices])).to(self.device)
            try:
                probs = predict_probs(self.model.module, images, self.model.size_multiple, tta=self.tta)
                probs = probs.float().cpu().numpy()
            except Exception as exc:  # e.g. a frame too small for the network, or out of memory
                for i in indices:
                    reason = f"{batch[i].frame.name}: the network failed on this frame ({type(exc).__name__}: {exc})"
                    results[i] = FrameFailure(batch[i].frame, reason)
                continue
            for i, frame_probs in zip(indices, probs, strict=True):
                try:
                    results[i] = self._postprocess(batch[i], frame_probs)
                except Exception as exc:
                    results[i] = FrameFailure(
                        batch[i].frame, f"{batch[i].frame.name}: post-processing failed ({exc})"
                    )
        batch.clear()
        for i in sorted(results):
            yield results[i]

    def _postprocess(self, item: _Prepared, probs: np.ndarray) -> FramePrediction:
        # Back to the frame's own pixels before thresholding: masks come out at the input's size and
        # positions/areas use the frame's own spacing, not the model's.
        probs = resize_probs(probs, item.bmode.shape)
        spacing_mm = item.frame.spacing_mm
        label_map = labels_from_probs(probs, self.classes, self.params, spacing_mm)
        points = find_trigger_points(
            label_map, spacing_mm, self.classes, probs=probs, elasto_kpa=item.elasto_kpa,
            min_area_mm2=self.params.min_area_mm2,
        )  # fmt: skip
        return FramePrediction(item.frame, item.bmode, item.elasto_kpa, label_map, points)


def resize_probs(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(K, h, w) -> (K, H, W) bilinear, renormalised so each pixel still sums to one."""
    if probs.shape[1:] == tuple(shape):
        return probs
    height, width = shape
    planes = [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs]
    out = np.stack(planes).astype(np.float32)
    return out / np.clip(out.sum(axis=0, keepdims=True), 1e-6, None)
