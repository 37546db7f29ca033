"""The streaming predictor: input order, failures in place, ``finish`` on every prediction, bounded batches."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from model_files import MODEL_SPACING_MM, blob_frame, make_model_file
from tpnet.core.io import write_png
from tpnet.core.model_file import load_model_file
from tpnet.inference.inputs import FrameInput
from tpnet.inference.predictor import FrameFailure, FramePrediction, Predictor


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return load_model_file(make_model_file(tmp_path_factory.mktemp("model")))


def _frames(folder, count: int) -> list[FrameInput]:
    """``count`` frames of two sizes, one nodule each at a known x; every 5th file is broken."""
    frames = []
    for i in range(count):
        path = folder / f"f{i:03d}_bmode.png"
        if i % 5 == 3:
            path.write_bytes(b"not a png")
        else:
            width_mm = 9.6 if i % 2 else 12.8
            bmode = blob_frame((6.4, width_mm), MODEL_SPACING_MM, nodules=[(2.0 + (i % 3), 3.0, 1.2)])[0]
            write_png(path, np.round(bmode * 255).astype(np.uint8))
        frames.append(FrameInput(f"f{i:03d}", path.name, path, None, MODEL_SPACING_MM, "cli"))
    return frames


@pytest.mark.parametrize("batch_size, workers", [(1, 1), (3, 2), (4, 3)])
def test_results_keep_input_order_and_finish_runs_once_per_prediction(tmp_path, model, batch_size, workers):
    frames = _frames(tmp_path, 23)
    finished, lock = [], threading.Lock()

    def finish(prediction: FramePrediction) -> None:
        assert threading.current_thread() is not threading.main_thread()  # off the network's thread
        with lock:
            finished.append(prediction.frame.stem)

    predictor = Predictor(model, batch_size=batch_size)
    results = list(predictor.run(frames, workers=workers, finish=finish))

    assert [r.frame.stem for r in results] == [f.stem for f in frames]
    for i, result in enumerate(results):
        if i % 5 == 3:
            assert isinstance(result, FrameFailure) and result.frame.name in result.reason
        else:
            assert isinstance(result, FramePrediction)
            (point,) = result.trigger_points
            assert point.x_mm == pytest.approx(2.0 + (i % 3), abs=0.2)
            assert result.label_map.shape == result.bmode.shape
    assert sorted(finished) == sorted(r.frame.stem for r in results if isinstance(r, FramePrediction))


def test_an_error_in_finish_stops_the_run_at_that_frame(tmp_path, model):
    frames = _frames(tmp_path, 9)

    def finish(prediction: FramePrediction) -> None:
        if prediction.frame.stem == "f004":
            raise OSError("disk full")

    seen = []
    with pytest.raises(OSError, match="disk full"):
        for result in Predictor(model, batch_size=2).run(frames, workers=2, finish=finish):
            seen.append(result.frame.stem)
    assert seen == ["f000", "f001", "f002", "f003"]  # everything before the failing frame was handed out
