"""Test helper: tiny exported model files and frames whose detections are known in advance.

The "detector" is a per-pixel (1x1-conv) network with hand-set weights, so the tests need neither
training nor the model zoo:

- dark B-mode (< ~0.36)                      -> active_trp
- dark B-mode under stiff SWE (~150 kPa)     -> latent_trp
- bright B-mode (> ~0.84)                    -> vessel
- anything else (the 0.6 grey background)    -> background

``blob_frame`` draws such a scene at any pixel spacing, so the same anatomy can be rendered at two
resolutions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tpnet.core.encoding import Encoding
from tpnet.core.model_file import META_FILENAME, build_meta

CLASSES = ("background", "active_trp", "latent_trp", "vessel")
MODEL_SPACING_MM = 0.2
SIZE_MULTIPLE = 4
BACKGROUND, NODULE, VESSEL = 0.6, 0.2, 1.0  # B-mode grey levels
SOFT_KPA, STIFF_KPA = 30.0, 150.0


class BlobDetector(nn.Module):
    def __init__(self, channels: Sequence[str], context_slices: int = 0) -> None:
        super().__init__()
        self.size_multiple = SIZE_MULTIPLE
        # A 2.5-D variant (issue #17) takes 2k neighbour planes after the B-mode and ignores them (weight 0).
        context = 2 * context_slices
        self.features = nn.Conv2d(len(channels) + context, 3, kernel_size=1)
        self.head = nn.Conv2d(3, len(CLASSES), kernel_size=1)
        bmode, elasto = 0, list(channels).index("elasto") + context if "elasto" in channels else None
        with torch.no_grad():
            self.features.weight.zero_()
            self.head.weight.zero_()
            # features: dark = relu(0.4 - b), bright = relu(b - 0.8), dark_and_stiff = relu(0.8 - 2b + e/100 - 1)
            self.features.weight[0, bmode] = -1.0
            self.features.weight[1, bmode] = 1.0
            self.features.weight[2, bmode] = -2.0
            if elasto is not None:
                self.features.weight[2, elasto] = 1.0
            self.features.bias.copy_(torch.tensor([0.4, -0.8, -0.2]))
            # logits: background 0; active = 50 dark - 20 stiff - 2; latent = 20 stiff - 5; vessel = 50 bright - 2
            self.head.weight[1, 0], self.head.weight[1, 2] = 50.0, -20.0
            self.head.weight[2, 2] = 20.0
            self.head.weight[3, 1] = 50.0
            self.head.bias.copy_(torch.tensor([0.0, -2.0, -5.0, -2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def make_meta(
    spacing_mm: float, channels: Sequence[str], method: str, min_area_mm2: float, context_slices: int = 0
) -> dict:
    return build_meta(
        model_name="blob_detector",
        classes=CLASSES,
        encoding=Encoding(channels=tuple(channels), context_slices=context_slices),
        spacing_mm=spacing_mm,
        size_multiple=SIZE_MULTIPLE,
        postprocess={"threshold": 0.5, "min_area_mm2": min_area_mm2, "match_mm": 5.0},
        export_method=method,
        config_fingerprint="test",
    )


# A calibration whose p_active is the component's active share itself (weight 1 on its logit), validated as
# separable: tests that check active/latent classes through tpnet-infer use it (an uncalibrated model says
# "indeterminate", issue #14).
SEPARABLE_CALIBRATION = {
    "temperature": 1.0,
    "active": {
        "features": ["logit_active_fraction"],
        "mean": [0.0],
        "scale": [1.0],
        "intercept": 0.0,
        "coef": [1.0],
    },
    "active_separable": True,
    "tta": True,  # as tpnet-infer runs by default
}


def separable(meta: dict) -> None:
    """``edit_meta`` for make_model_file: the model tells active from latent (``SEPARABLE_CALIBRATION``)."""
    meta["calibration"] = dict(SEPARABLE_CALIBRATION)


def make_model_file(
    tmp_path: Path,
    fmt: str = "torchscript",
    spacing_mm: float = MODEL_SPACING_MM,
    channels: Sequence[str] = ("bmode", "elasto", "elasto_valid"),
    min_area_mm2: float = 1.0,
    edit_meta: Callable[[dict], None] | None = None,
    with_meta: bool = True,
    name: str | None = None,
    context_slices: int = 0,
) -> Path:
    """Export ``BlobDetector`` as TorchScript (.pt), torch.export (.pt2) or ONNX (.onnx, see
    ``blob_detector_onnx``) with valid metadata (``edit_meta`` may then break it on purpose; ``with_meta=False``
    leaves it out)."""
    model = BlobDetector(channels, context_slices).eval()
    method = {"torchscript": "script", "pt2": "torch.export", "onnx": "torch.onnx"}.get(fmt, fmt)
    meta = make_meta(spacing_mm, channels, method, min_area_mm2, context_slices)
    if edit_meta is not None:
        edit_meta(meta)
    extra = {META_FILENAME: json.dumps(meta)} if with_meta else {}
    tmp_path.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        path = tmp_path / (name or "model.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit deprecation notices
            torch.jit.save(torch.jit.script(model), str(path), _extra_files=extra)
    elif fmt == "pt2":
        path = tmp_path / (name or "model.pt2")
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        example = torch.zeros(2, model.features.in_channels, 16, 16)
        program = torch.export.export(model, (example,), dynamic_shapes=(dims,))
        torch.export.save(program, path, extra_files=extra)
    elif fmt == "onnx":
        path = tmp_path / (name or "model.onnx")
        path.write_bytes(blob_detector_onnx(model, extra))
    else:
        raise ValueError(f"fmt must be 'torchscript', 'pt2' or 'onnx'; got {fmt!r}")
    return path


def blob_detector_onnx(model: BlobDetector, metadata: dict[str, str]) -> bytes:
    """``model`` as an ONNX graph (Conv 1x1 -> Relu -> Conv 1x1, its own weights), built with onnx.helper in
    milliseconds; tpnet-export's dynamo export takes seconds and is tested on its own
    (tests/export/test_onnx_export.py). Input "image", output "pred", batch/height/width dynamic, like it."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [
        numpy_helper.from_array(tensor.detach().numpy(), name.replace(".", "_"))
        for name, tensor in model.state_dict().items()
    ]
    nodes = [
        helper.make_node("Conv", ["image", "features_weight", "features_bias"], ["features"]),
        helper.make_node("Relu", ["features"], ["active"]),
        helper.make_node("Conv", ["active", "head_weight", "head_bias"], ["pred"]),
    ]
    channels = model.features.in_channels
    graph = helper.make_graph(
        nodes, "blob_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", channels, "height", "width"])],
        [helper.make_tensor_value_info("pred", TensorProto.FLOAT, ["batch", len(CLASSES), "height", "width"])],
        weights,
    )  # fmt: skip
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    for key, value in metadata.items():
        onnx_model.metadata_props.add(key=key, value=value)
    return onnx_model.SerializeToString()


def blob_frame(
    shape_mm: tuple[float, float],
    spacing_mm: float,
    nodules: Sequence[tuple[float, float, float]] = (),
    vessels: Sequence[tuple[float, float, float]] = (),
    stiff_nodules: Sequence[tuple[float, float, float]] = (),
    swe_box_mm: tuple[float, float, float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(B-mode, kPa or None) for a (height_mm, width_mm) field of view. Discs are (x_mm, y_mm, r_mm)
    with x lateral, y depth, measured from the top-left pixel centre; ``stiff_nodules`` lie inside
    ``swe_box_mm`` = (x0, y0, x1, y1) and read ~150 kPa (latent TrPs for the detector)."""
    height, width = round(shape_mm[0] / spacing_mm), round(shape_mm[1] / spacing_mm)
    y_mm, x_mm = np.mgrid[0:height, 0:width].astype(np.float32) * spacing_mm
    bmode = np.full((height, width), BACKGROUND, np.float32)
    stiff = np.zeros((height, width), bool)
    for discs, value in ((nodules, NODULE), (vessels, VESSEL), (stiff_nodules, NODULE)):
        for cx, cy, r in discs:
            inside = (x_mm - cx) ** 2 + (y_mm - cy) ** 2 <= r**2
            bmode[inside] = value
            if discs is stiff_nodules:
                stiff |= inside
    if swe_box_mm is None:
        return bmode, None
    x0, y0, x1, y1 = swe_box_mm
    box = (x_mm >= x0) & (x_mm <= x1) & (y_mm >= y0) & (y_mm <= y1)
    kpa = np.where(box, SOFT_KPA, np.nan).astype(np.float32)
    kpa[box & stiff] = STIFF_KPA
    return bmode, kpa
