"""Write a trained network as an ONNX model (``.onnx``) that onnxruntime runs without PyTorch.

``torch.onnx.export(..., dynamo=True)`` captures the network with ``torch.export`` (batch, height and width
dynamic; height and width multiples of ``size_multiple``, as in the .pt2 export) and translates that graph
into ONNX. The metadata travels inside the file as the model's ``metadata_props`` entry ``tpnet_meta.json``
(the same JSON the torch formats carry), with a few plain keys beside it for model viewers such as Netron.
The model is one file: every weight inside it (no external-data files), so ONNX's protobuf limit of 2 GiB
bounds it (a tpnet U-Net is tens of MB). Written atomically, like the other formats.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from tpnet.core.atomic import atomic_write_bytes
from tpnet.core.model_file import META_FILENAME
from tpnet.export.export import (
    ExportError,
    check_output_path,
    cpu_eval_copy,
    dynamic_example_and_dims,
    with_export_info,
)

log = logging.getLogger(__name__)

# The tensor names network_data_format gives (build_meta): what a reader of the ONNX graph sees.
INPUT_NAME, OUTPUT_NAME = "image", "pred"
# The exporter's optimiser logs every pass at INFO ("Removed 92 unused nodes"); under Hydra's logging that is
# a dozen lines of noise per export.
_CHATTY_LOGGERS = ("onnxscript", "onnx_ir")


def export_onnx(
    model: nn.Module, meta: dict, output: Path, example: Tensor, checkpoint: Path | None = None
) -> dict:
    """``torch.onnx.export`` (dynamo) with dynamic batch, height and width; ``meta`` in ``metadata_props``.

    Returns the metadata as written (``export.method`` = "torch.onnx", with the ONNX opset)."""
    output = Path(output)
    check_output_path(output, ".onnx", checkpoint)
    model = cpu_eval_copy(model)
    example, dims = dynamic_example_and_dims(model, meta, output, example)
    try:
        with _warnings_only(_CHATTY_LOGGERS):
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                dynamic_shapes=(dims,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                external_data=False,
                verbose=False,  # no progress lines on stdout
            )
    except ImportError as exc:  # onnx / onnxscript: the train extra has them
        raise ExportError(
            f'{output}: format=onnx needs the onnx and onnxscript packages: pip install "tpnet[train]" ({exc})'
        ) from exc
    except Exception as exc:
        raise ExportError(f"{output}: torch.onnx.export failed: {type(exc).__name__}: {exc}") from exc

    proto = program.model_proto
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    meta = with_export_info(meta, "torch.onnx", onnx_opset=opset)
    for key, value in metadata_props(meta).items():
        proto.metadata_props.add(key=key, value=value)
    try:
        data = proto.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise ExportError(
            f"{output}: the ONNX model exceeds protobuf's 2 GiB single-file limit ({exc}); tpnet writes ONNX "
            "models as one file, so export this network as TorchScript or .pt2"
        ) from exc
    log.info("ONNX model: opset %s, %.1f MB in one file", opset, len(data) / 1e6)
    atomic_write_bytes(output, data)
    return meta


@contextlib.contextmanager
def _warnings_only(names: tuple[str, ...]) -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def metadata_props(meta: dict) -> dict[str, str]:
    """``tpnet_meta.json`` (what tpnet-infer reads) plus plain copies of a few fields for people and viewers."""
    return {
        META_FILENAME: json.dumps(meta, indent=2),
        "tpnet.model_name": str(meta["model_name"]),
        "tpnet.classes": ",".join(meta["classes"]),
        "tpnet.input_channels": ",".join(meta["encoding"]["channels"]),
        "tpnet.spacing_mm": repr(float(meta["spacing_mm"])),
        "tpnet.size_multiple": str(int(meta["size_multiple"])),
        "tpnet.version": str(meta["tpnet_version"]),
    }
