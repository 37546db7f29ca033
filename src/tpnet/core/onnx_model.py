"""ONNX model files: the tpnet metadata in ``metadata_props``, a structural check, and onnxruntime.

An ONNX file is one protobuf ``ModelProto``: data, no pickle, and onnxruntime runs only its built-in operators
(custom-operator libraries load only when a session registers them, which tpnet never does). What loading can
still do is read *external data*: a tensor may name a file that onnxruntime then reads, beside the model or,
for a model given as bytes, relative to the working directory. ``tpnet-export`` writes one self-contained file,
so :func:`inspect_onnx` walks the message tree down to every tensor and refuses any stored elsewhere.

The walk reads protobuf's wire format directly (standard library only): the base install has onnxruntime but
not the ``onnx`` package, and reading the metadata must not build an inference session. onnxruntime (and
numpy) are imported only when :class:`OnnxNetwork` builds one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tpnet.core.archive_safety import UnsafeModelError

if TYPE_CHECKING:
    import numpy as np

MAX_ONNX_BYTES = 2**31 - 1  # protobuf's message limit: a single-file ONNX model is at most 2 GiB
MAX_NESTING = (
    64  # graphs inside node attributes (If/Loop bodies) may nest; a crafted file must not recurse forever
)

# Protobuf wire types (groups, 3 and 4, are deprecated and never written for ONNX).
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
# onnx.proto: for each message on a path to a tensor, its length-delimited fields that hold messages.
_SUBMESSAGES: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {
        5: "TensorProto", 6: "GraphProto", 10: "TensorProto", 11: "GraphProto",
        22: "SparseTensorProto", 23: "SparseTensorProto",
    },
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
    "TensorProto": {},
}  # fmt: skip
_MODEL_IR_VERSION, _MODEL_GRAPH, _MODEL_METADATA = 1, 7, 14
_TENSOR_NAME, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 8, 13, 14
_DATA_LOCATION_EXTERNAL = 1


class OnnxFormatError(ValueError):
    """The bytes are not a (well-formed) ONNX model."""


def inspect_onnx(data: bytes) -> dict[str, str]:
    """The model's ``metadata_props`` after checking ``data`` is a well-formed, self-contained ONNX model.

    Raises OnnxFormatError when it is not an ONNX model (not protobuf, no graph, over 2 GiB) and
    UnsafeModelError when a tensor lives in an external file."""
    if len(data) > MAX_ONNX_BYTES:
        raise OnnxFormatError(f"{len(data)} bytes: larger than ONNX's 2 GiB single-file limit")
    view = memoryview(data)
    seen: set[int] = set()
    metadata: dict[str, str] = {}
    for number, wire, value in _fields(view):
        seen.add(number)
        if number == _MODEL_METADATA and wire == _LENGTH:
            entry = {n: bytes(v) for n, w, v in _fields(value) if w == _LENGTH and n in (1, 2)}
            metadata[_text(entry.get(1, b""))] = _text(entry.get(2, b""))
    if not {_MODEL_IR_VERSION, _MODEL_GRAPH} <= seen:
        raise OnnxFormatError("protobuf without an ir_version and a graph: not an ONNX model")
    _refuse_external_tensors(view, "ModelProto", 0)
    return metadata


def _refuse_external_tensors(message: memoryview, kind: str, depth: int) -> None:
    if depth > MAX_NESTING:
        raise OnnxFormatError(f"graphs nested more than {MAX_NESTING} deep")
    children = _SUBMESSAGES[kind]
    name = b""
    for number, wire, value in _fields(message):
        if kind == "TensorProto":
            if number == _TENSOR_NAME and wire == _LENGTH:
                name = bytes(value)
            external = number == _TENSOR_EXTERNAL_DATA or (
                number == _TENSOR_DATA_LOCATION and value == _DATA_LOCATION_EXTERNAL
            )
            if external:
                raise UnsafeModelError(
                    f"tensor {_text(name) or '(unnamed)'!r} is stored in an external file, which loading would "
                    "read from disk; tpnet ONNX models keep every tensor inside the one file"
                )
        elif number in children and wire == _LENGTH:
            _refuse_external_tensors(value, children[number], depth + 1)


def _fields(message: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of one message: an int for varints, else the bytes."""
    pos, end = 0, len(message)
    while pos < end:
        key, pos = _varint(message, pos)
        number, wire = key >> 3, key & 7
        if number < 1:
            raise OnnxFormatError("field number 0: not protobuf")
        if wire == _VARINT:
            value, pos = _varint(message, pos)
            yield number, wire, value
            continue
        if wire == _LENGTH:
            size, pos = _varint(message, pos)
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
        else:
            raise OnnxFormatError(f"wire type {wire}: not an ONNX protobuf")
        if pos + size > end:
            raise OnnxFormatError("a field runs past the end of its message: truncated or not protobuf")
        yield number, wire, message[pos : pos + size]
        pos += size


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise OnnxFormatError("a number runs past the end of the data: truncated or not protobuf")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OnnxFormatError("a metadata string is not UTF-8") from None


class OnnxNetwork:
    """An onnxruntime session that maps (B, C, H, W) float32 images to (B, K, H, W) logits, as the torch
    modules do, on numpy arrays. ``providers`` as from :func:`tpnet.core.device.onnxruntime_providers`.

    ``threads``: onnxruntime's intra-op threads; by default its own (one per physical core), unless
    ``OMP_NUM_THREADS`` is set, which it then follows, as PyTorch does: one setting sizes both runtimes."""

    def __init__(self, data: bytes, providers: list[str], threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: its optimiser's notices mean nothing to a clinician
        from_env = os.environ.get("OMP_NUM_THREADS", "")
        if threads is None and from_env.isdigit() and int(from_env) > 0:
            threads = int(from_env)
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(data, sess_options=options, providers=providers)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise OnnxFormatError(
                f"the graph has {len(inputs)} input(s) and {len(outputs)} output(s); a tpnet network has one each"
            )
        self.input_name = inputs[0].name
        self.providers: list[str] = list(self.session.get_providers())

    def __call__(self, images: np.ndarray) -> np.ndarray:
        import numpy as np

        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.float32)}
        (logits,) = self.session.run(None, feed)
        return logits
