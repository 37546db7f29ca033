"""Write a trained network to a self-describing model file: TorchScript (.pt) or torch.export (.pt2); ONNX
(.onnx) is written by ``tpnet.export.onnx`` with the helpers here.

The metadata (classes, input encoding, pixel spacing, post-processing) travels inside the file as the
extra file ``tpnet_meta.json``, so a deployed model never depends on a config sitting next to it.
Padding to ``size_multiple`` and cropping back stay outside the network (see inference/padding.py).
Files are written atomically: serialised to memory, written to a temp file in the target folder,
fsync'ed, then renamed over the target.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from tpnet.core.atomic import atomic_write_bytes
from tpnet.core.model_file import META_FILENAME, ModelFileError, read_meta, validate_meta

log = logging.getLogger(__name__)

MAX_SIDE_PX = 8192  # upper bound for the dynamic height/width in .pt2 files
MAX_BATCH = 1024

# PyTorch 2.9+ deprecates TorchScript with exactly these FutureWarnings. We still ship TorchScript because
# it is the one format a C++/LibTorch host or an older PyTorch can load without Python model code.
_JIT_DEPRECATION = r"`torch\.jit\.(script|trace|trace_method|save)` is deprecated"


class ExportError(RuntimeError):
    """The model could not be exported; the message names the output file and the reason."""


def export_torchscript(
    model: nn.Module, meta: dict, output: Path, example: Tensor, checkpoint: Path | None = None
) -> dict:
    """Script ``model`` (trace only if scripting fails) and save it with ``meta`` embedded.

    Returns the metadata as written (with ``export.method`` filled in). ``example`` is (B, C, H, W);
    it is used by the trace fallback only.
    """
    output = Path(output)
    check_output_path(output, ".pt", checkpoint)
    model = cpu_eval_copy(model)
    example = example.detach().cpu()
    log.info("Exporting TorchScript (deprecated upstream, still the format LibTorch/C++ hosts can load).")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            program = torch.jit.script(model)
        method = "script"
    except Exception as exc:  # TorchScript rejects some Python constructs; tracing still works for convnets
        msg = (
            f"{output}: torch.jit.script failed ({type(exc).__name__}: {exc}); falling back to torch.jit.trace. "
            "A traced model freezes Python control flow at the example input: check parity carefully."
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        log.warning(msg)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
            program = torch.jit.trace(model, example)
        method = "trace"

    meta = with_export_info(meta, method)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_JIT_DEPRECATION, category=FutureWarning)
        torch.jit.save(program, buffer, _extra_files={META_FILENAME: json.dumps(meta, indent=2)})
    atomic_write_bytes(output, buffer.getvalue())
    return meta


def export_pt2(
    model: nn.Module, meta: dict, output: Path, example: Tensor, checkpoint: Path | None = None
) -> dict:
    """``torch.export`` with dynamic batch, height and width (height/width = Dim * size_multiple)."""
    output = Path(output)
    check_output_path(output, ".pt2", checkpoint)
    model = cpu_eval_copy(model)
    example, dims = dynamic_example_and_dims(model, meta, output, example)
    try:
        program = torch.export.export(model, (example,), dynamic_shapes=(dims,))
    except Exception as exc:
        raise ExportError(f"{output}: torch.export failed: {type(exc).__name__}: {exc}") from exc

    meta = with_export_info(meta, "torch.export")
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={META_FILENAME: json.dumps(meta, indent=2)})
    atomic_write_bytes(output, buffer.getvalue())
    return meta


def dynamic_example_and_dims(
    model: nn.Module, meta: dict, output: Path, example: Tensor
) -> tuple[Tensor, dict[int, object]]:
    """The example (batch >= 2: torch.export specialises a size-1 dim to the constant 1) and the dynamic dims of
    a (B, C, H, W) input: batch, and height/width as Dim * size_multiple. Shared by .pt2 and ONNX export."""
    example = example.detach().cpu()
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    multiple = int(meta.get("size_multiple") or getattr(model, "size_multiple", 1))
    height, width = example.shape[-2:]
    if height % multiple or width % multiple:
        raise ExportError(
            f"{output}: example size {height}x{width} is not a multiple of size_multiple={multiple}"
        )
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    rows = torch.export.Dim("rows", min=1, max=MAX_SIDE_PX // multiple)
    cols = torch.export.Dim("cols", min=1, max=MAX_SIDE_PX // multiple)
    # Positional spec (a tuple of one dict) so the forward argument may be named anything.
    dims = {
        0: batch,
        2: rows * multiple if multiple > 1 else rows,
        3: cols * multiple if multiple > 1 else cols,
    }
    return example, dims


def with_export_info(meta: dict, method: str, **details: object) -> dict:
    """``meta`` with ``export`` saying how this file was actually produced (build_meta() defines the other keys);
    ``details`` (e.g. the ONNX opset) are added there."""
    meta = {**meta, "export": {"method": method, "torch_version": torch.__version__, **details}}
    validate_meta(meta, "metadata to embed")
    json.dumps(meta)  # fail here, before writing, if something is not JSON-serialisable
    return meta


def cpu_eval_copy(model: nn.Module) -> nn.Module:
    # A copy, so exporting never flips the caller's model to eval mode or moves it off its device.
    return copy.deepcopy(model).cpu().eval()


def check_output_path(output: Path, suffix: str, checkpoint: Path | None) -> None:
    if output.suffix != suffix:
        raise ExportError(
            f"{output}: this format is written to a '{suffix}' file (TorchScript .pt, torch.export .pt2, "
            "ONNX .onnx)"
        )
    if checkpoint is not None and output.resolve() == Path(checkpoint).resolve():
        raise ExportError(f"{output}: refusing to overwrite the input checkpoint")
    if output.exists():
        # Only a previous export may be replaced; anything else (a checkpoint, data) is left alone.
        try:
            read_meta(output)
        except ModelFileError as exc:
            raise ExportError(
                f"{output}: exists and is not a tpnet model file; refusing to overwrite it"
            ) from exc
