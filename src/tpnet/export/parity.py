"""Prove an exported file reproduces the eager model, loaded the way a deployment would load it.

The file is run in a fresh Python process where ``tpnet`` cannot be imported (a meta-path finder refuses
it, and the working directory is an empty temp folder), using plain ``torch.jit.load`` or
``torch.export.load``, or for ONNX plain ``onnxruntime.InferenceSession`` with ``torch`` refused as well (the
deployment has no PyTorch). That catches files that silently depend on our source tree, metadata that does not
survive the round trip, and shapes that were frozen at export time (we test sizes other than the example).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpnet.core.encoding import Encoding, pad_amounts
from tpnet.core.model_file import read_meta
from tpnet.export.export import (
    META_FILENAME,
    ExportError,
    check_output_path,
    cpu_eval_copy,
    export_pt2,
    export_torchscript,
)
from tpnet.export.onnx import export_onnx

SUBPROCESS_TIMEOUT_S = 600
_SUFFIX = {"torchscript": ".pt", "pt2": ".pt2", "onnx": ".onnx"}
_EXPORTERS = {"torchscript": export_torchscript, "pt2": export_pt2, "onnx": export_onnx}

# Runs in the child: argv = model_file, format, inputs.pt, outputs.pt
_CHILD_SCRIPT = r"""
import importlib.abc, json, sys, warnings

class _RefuseTpnet(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tpnet" or name.startswith("tpnet."):
            raise ImportError(f"parity check: {name!r} must not be needed to load an exported model")
        return None

sys.meta_path.insert(0, _RefuseTpnet())
import torch

model_file, kind, inputs_path, outputs_path, meta_name = sys.argv[1:6]
extra = {meta_name: ""}
if kind == "torch.export":
    with open(model_file, "rb") as fh:
        net = torch.export.load(fh, extra_files=extra).module()
else:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is deprecated", category=FutureWarning)
        net = torch.jit.load(model_file, map_location="cpu", _extra_files=extra)
    net.eval()
meta_text = extra[meta_name]
meta_text = meta_text.decode("utf-8") if isinstance(meta_text, bytes) else meta_text
meta = json.loads(meta_text)
if meta.get("format") != "tpnet-model":
    raise SystemExit(f"{model_file}: {meta_name} has no format='tpnet-model' marker")
inputs = torch.load(inputs_path, weights_only=True)
with torch.no_grad():
    outputs = [net(x) for x in inputs]
try:
    import tpnet  # noqa: F401
    tpnet_blocked = False
except ImportError:
    tpnet_blocked = True
torch.save({"outputs": outputs, "meta": meta_text, "tpnet_blocked": tpnet_blocked}, outputs_path)
"""

# Runs in the child for an ONNX model: argv = model_file, inputs.npz, outputs.npz, meta_name. Neither tpnet
# nor torch may be imported: onnxruntime and numpy are all a deployment has.
_ONNX_CHILD_SCRIPT = r"""
import importlib.abc, json, sys

REFUSED = ("tpnet", "torch")

class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError(f"parity check: {name!r} must not be needed to run an ONNX model")
        return None

sys.meta_path.insert(0, _Refuse())
import numpy as np
import onnxruntime

model_file, inputs_path, outputs_path, meta_name = sys.argv[1:5]
session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
meta_text = session.get_modelmeta().custom_metadata_map.get(meta_name)
if meta_text is None:
    raise SystemExit(f"{model_file}: onnxruntime sees no {meta_name} in the model's metadata_props")
if json.loads(meta_text).get("format") != "tpnet-model":
    raise SystemExit(f"{model_file}: {meta_name} has no format='tpnet-model' marker")
input_name = session.get_inputs()[0].name
with np.load(inputs_path, allow_pickle=False) as inputs:
    outputs = {key: session.run(None, {input_name: inputs[key]})[0] for key in inputs.files}
refused_loaded = sorted(m for m in sys.modules if m.split(".")[0] in REFUSED)
np.savez(outputs_path, meta=np.array(meta_text), refused_loaded=np.array(json.dumps(refused_loaded)), **outputs)
"""


class ParityError(RuntimeError):
    """The exported file does not load stand-alone or its outputs differ from the eager model."""


def check_parity(model_file: Path, model: nn.Module, inputs: Sequence[Tensor], atol: float = 1e-4) -> float:
    """Max |logit difference| between ``model`` (eager, CPU, eval) and ``model_file`` run in a fresh
    process without tpnet (and, for ONNX, without torch). ``inputs`` are (B, C, H, W) tensors. Raises
    ``ParityError`` above ``atol``."""
    model_file = Path(model_file).resolve()
    _, kind = read_meta(model_file)  # "torchscript" | "torch.export" | "onnx"; also validates the metadata
    inputs = [x.detach().cpu().float().contiguous() for x in inputs]
    with tempfile.TemporaryDirectory(prefix="tpnet-parity-") as workdir:
        run_child = _run_onnx_child if kind == "onnx" else _run_torch_child
        exported_outputs = run_child(model_file, kind, inputs, Path(workdir))

    reference = cpu_eval_copy(model)
    max_diff = 0.0
    with torch.no_grad():
        for x, exported in zip(inputs, exported_outputs, strict=True):
            eager = reference(x)
            if exported.shape != eager.shape:
                raise ParityError(
                    f"{model_file}: output shape {tuple(exported.shape)} != eager {tuple(eager.shape)} "
                    f"for input {tuple(x.shape)}"
                )
            diff = (exported - eager).abs().max().item()
            max_diff = max(max_diff, diff if diff == diff else float("inf"))  # NaN counts as a failure
    if max_diff > atol:
        raise ParityError(f"{model_file}: max |logit difference| {max_diff:.3g} exceeds atol {atol:g}")
    return max_diff


def _run_child(script: str, args: list[str], model_file: Path, workdir: Path, what: str) -> None:
    # -I: ignore PYTHONPATH/user site; cwd = empty temp dir so nothing local shadows the install.
    cmd = [sys.executable, "-I", "-c", script, *args]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    if proc.returncode != 0:
        raise ParityError(
            f"{model_file}: could not be loaded and run stand-alone (fresh process, {what}):\n{proc.stderr[-3000:]}"
        )


def _run_torch_child(model_file: Path, kind: str, inputs: list[Tensor], workdir: Path) -> list[Tensor]:
    inputs_path, outputs_path = workdir / "inputs.pt", workdir / "outputs.pt"
    torch.save(inputs, inputs_path)
    args = [str(model_file), kind, str(inputs_path), str(outputs_path), META_FILENAME]
    _run_child(_CHILD_SCRIPT, args, model_file, workdir, "no tpnet")
    result = torch.load(outputs_path, weights_only=True)
    if not result["tpnet_blocked"]:
        raise ParityError(f"{model_file}: parity child could import tpnet; the isolation check is broken")
    return result["outputs"]


def _run_onnx_child(model_file: Path, kind: str, inputs: list[Tensor], workdir: Path) -> list[Tensor]:
    """onnxruntime in a process that refuses tpnet and torch; arrays travel as .npz (no pickle)."""
    inputs_path, outputs_path = workdir / "inputs.npz", workdir / "outputs.npz"
    keys = [f"x{i:03d}" for i in range(len(inputs))]
    np.savez(inputs_path, **{key: x.numpy() for key, x in zip(keys, inputs, strict=True)})
    args = [str(model_file), str(inputs_path), str(outputs_path), META_FILENAME]
    _run_child(_ONNX_CHILD_SCRIPT, args, model_file, workdir, "no tpnet, no torch")
    with np.load(outputs_path, allow_pickle=False) as result:
        refused_loaded = json.loads(str(result["refused_loaded"]))
        outputs = [torch.from_numpy(result[key].copy()) for key in keys]
    if refused_loaded:
        raise ParityError(
            f"{model_file}: the ONNX parity child imported {refused_loaded}; the isolation check is broken"
        )
    return outputs


def export_model(
    model: nn.Module,
    meta: dict,
    output: Path,
    fmt: str = "torchscript",
    real_inputs: Sequence[Tensor] = (),
    atol: float = 1e-4,
    checkpoint: Path | None = None,
) -> dict:
    """Export ``model`` with ``meta`` embedded, then prove parity; only a file that passes reaches ``output``.

    ``real_inputs``: encoded validation frames (tensor or array), (C, H, W) or (B, C, H, W); padded here
    to size_multiple.
    Returns ``{"path", "format", "method", "max_abs_diff", "example_size", "sizes", "atol"}``.
    """
    if fmt not in _SUFFIX:
        raise ExportError(f"{output}: unknown export format {fmt!r}; expected one of {sorted(_SUFFIX)}")
    output = Path(output)
    check_output_path(output, _SUFFIX[fmt], checkpoint)
    multiple = int(meta.get("size_multiple") or getattr(model, "size_multiple", 1))
    in_channels = Encoding.from_dict(meta["encoding"]).in_channels  # + 2k context planes of a 2.5-D model
    example, parity_inputs = _parity_inputs(in_channels, multiple, real_inputs, output)

    # Export into a private folder next to the target; move into place only after parity passes.
    output.parent.mkdir(parents=True, exist_ok=True)
    staging_dir = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}.staging-"))
    try:
        staged = staging_dir / output.name
        written_meta = _EXPORTERS[fmt](model, meta, staged, example)
        try:
            max_diff = check_parity(staged, model, parity_inputs, atol=atol)
        except ParityError as exc:
            raise ParityError(
                f"{output}: export failed the parity check, nothing was written. {exc}"
            ) from exc
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging_dir, ignore_errors=True)
    return {
        "path": str(output),
        "format": fmt,
        "method": written_meta["export"]["method"],
        "max_abs_diff": max_diff,
        "example_size": list(example.shape),
        "sizes": [list(x.shape) for x in parity_inputs],
        "atol": atol,
    }


def _parity_inputs(
    in_channels: int, multiple: int, real_inputs: Sequence[Tensor], output: Path
) -> tuple[Tensor, list[Tensor]]:
    """The export example (batch 2, 4m x 5m) plus random inputs at two other sizes and the real frames."""
    gen = torch.Generator().manual_seed(0)
    height, width = 4 * multiple, 5 * multiple
    example = torch.rand(2, in_channels, height, width, generator=gen)
    # Different batch, a taller and a shorter frame, never the example's width.
    sizes = [(1, height + multiple, width + 2 * multiple), (2, height - multiple, width + multiple)]
    inputs = [torch.rand(b, in_channels, h, w, generator=gen) for b, h, w in sizes]
    for index, frame in enumerate(real_inputs):
        frame = torch.as_tensor(frame).detach().cpu().float()  # numpy frames from a Dataset are fine too
        frame = frame[None] if frame.ndim == 3 else frame
        if frame.ndim != 4 or frame.shape[1] != in_channels:
            raise ExportError(
                f"{output}: real input {index} has shape {tuple(frame.shape)}; expected (C, H, W) or "
                f"(B, C, H, W) with C={in_channels}"
            )
        pad_h, pad_w = pad_amounts(frame.shape[-2], frame.shape[-1], multiple)
        inputs.append(F.pad(frame, (0, pad_w, 0, pad_h)))  # zeros bottom/right, as the predictor does
    return example, inputs
