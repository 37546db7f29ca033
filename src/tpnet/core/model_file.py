"""Exported model files carrying ``tpnet_meta.json``: a TorchScript ``.pt``, a ``torch.export`` ``.pt2`` or an
ONNX ``.onnx``.

The metadata says everything the inference tool needs without the training code: class names, input
encoding, training pixel spacing, the network's stride and the post-processing defaults. Its keys
are defined once, in ``build_meta``; the exporter writes it and ``load_model_file`` checks it. The torch
formats keep it as an extra file of their zip archive, ONNX as the model's ``metadata_props`` entry of the
same name (``tpnet.core.onnx_model``).

torch is imported only to load a TorchScript or .pt2 network: the base install runs ONNX models with
onnxruntime and has no torch, and a torch model there is refused in one line naming the extra to install.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpnet.core.archive_safety import UnsafeModelError, check_pt2_archive, check_torchscript_archive
from tpnet.core.contract import ClassRoles, ContractError, parse_roles
from tpnet.core.device import ONNX_CUDA, DeviceUnavailableError, onnxruntime_providers, torch_inference_device
from tpnet.core.encoding import Encoding
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.onnx_model import MAX_ONNX_BYTES, OnnxFormatError, OnnxNetwork, inspect_onnx
from tpnet.extras import EXTRAS, install_command, missing_modules

if TYPE_CHECKING:
    import torch

META_FILENAME = "tpnet_meta.json"
FORMAT_NAME = "tpnet-model"
FORMAT_VERSION = 1
EXPORT_METHODS: tuple[str, ...] = ("script", "trace", "torch.export", "torch.onnx")
REQUIRED_KEYS: tuple[str, ...] = (
    "format",
    "format_version",
    "tpnet_version",
    "model_name",
    "classes",
    "network_data_format",
    "encoding",
    "spacing_mm",
    "size_multiple",
    "postprocess",
    "export",
)
POSTPROCESS_KEYS: tuple[str, ...] = ("threshold", "min_area_mm2", "match_mm")
# Written when present; model files from before they existed load without them (the default applies).
OPTIONAL_POSTPROCESS_KEYS: tuple[str, ...] = ("min_mean_prob", "min_volume_mm3")
KINDS: tuple[str, ...] = ("torchscript", "torch.export", "onnx")


class ModelFileError(ValueError):
    """The model file cannot be used; the message names the file and the reason."""


class ModelNeedsTorchError(ModelFileError):
    """A TorchScript / .pt2 model where torch is not installed: the message names the extra and the ONNX way."""


@dataclass(frozen=True)
class LoadedModel:
    """A ready-to-call network (logits out) plus its validated metadata."""

    # torch.jit.ScriptModule or the GraphModule of an ExportedProgram (torch tensors), or an OnnxNetwork (numpy
    # arrays): each maps (B, C, H, W) images to logits.
    module: Any
    meta: dict
    kind: str  # "torchscript" | "torch.export" | "onnx"
    path: Path
    device: str = "cpu"  # where the network runs: "cpu" | "cuda"

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.meta["classes"])

    @property
    def roles(self) -> ClassRoles:
        """Trigger-point and critical classes (the naming rule for files written before issue #16)."""
        return parse_roles(self.meta.get("roles"), self.classes, str(self.path))

    @property
    def guidance(self) -> GuidanceParams:
        """Needle-guidance settings the model was validated with (defaults for files without them)."""
        raw = self.meta.get("guidance")
        return GuidanceParams() if raw is None else GuidanceParams.from_dict(raw)

    @property
    def encoding(self) -> Encoding:
        return Encoding.from_dict(self.meta["encoding"])

    @property
    def spacing_mm(self) -> float:
        return float(self.meta["spacing_mm"])

    @property
    def size_multiple(self) -> int:
        return int(self.meta["size_multiple"])


def build_meta(
    *,
    model_name: str,
    classes: Sequence[str],
    encoding: Encoding | dict,
    spacing_mm: float,
    size_multiple: int,
    postprocess: dict,
    export_method: str,
    tpnet_version: str | None = None,
    mlflow_run_id: str | None = None,
    config_fingerprint: str | None = None,
    dataset_name: str | None = None,
    dataset_fingerprint: str | None = None,
    torch_version: str | None = None,
    calibration: dict | None = None,
    model_card: dict | None = None,
    roles: dict | None = None,
    guidance: dict | None = None,
) -> dict:
    """The metadata dict stored as ``tpnet_meta.json``. Keyword names match the checkpoint's ``meta``,
    so an exporter can call ``build_meta(**ckpt["meta"], export_method=..., mlflow_run_id=...)``."""
    if export_method not in EXPORT_METHODS:
        raise ValueError(f"export_method must be one of {list(EXPORT_METHODS)}; got {export_method!r}")
    enc = encoding if isinstance(encoding, Encoding) else Encoding.from_dict(encoding)
    if tpnet_version is None:
        from tpnet import __version__ as tpnet_version
    classes = [str(c) for c in classes]
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tpnet_version": tpnet_version,
        "model_name": model_name,
        "classes": classes,
        # MONAI-bundle-like description of the tensors, for readers that do not know tpnet.
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "modality": "US",
                    "num_channels": enc.in_channels,
                    "channel_def": {str(i): name for i, name in enumerate(enc.input_planes)},
                    "spatial_shape": [f"{size_multiple}*n", f"{size_multiple}*n"],
                    "dtype": "float32",
                }
            },
            "outputs": {
                # What the module returns: raw scores. Class probabilities are softmax over dim 1, which
                # tpnet.core.predict.predict_probs applies after cropping the padding (tests/core/test_model_file.py).
                "pred": {
                    "type": "logits",
                    "activation": "softmax over channels (dim 1) gives class probabilities",
                    "num_channels": len(classes),
                    "channel_def": {str(i): name for i, name in enumerate(classes)},
                }
            },
        },
        "encoding": enc.to_dict(),
        "spacing_mm": float(spacing_mm),
        "size_multiple": int(size_multiple),
        "postprocess": {
            k: float(postprocess[k])
            for k in (*POSTPROCESS_KEYS, *OPTIONAL_POSTPROCESS_KEYS)
            if k in postprocess
        },
        "mlflow_run_id": mlflow_run_id,
        "config_fingerprint": config_fingerprint,
        "dataset_name": dataset_name,
        "dataset_fingerprint": dataset_fingerprint,
        "export": {"method": export_method, "torch_version": torch_version or _torch_version()},
    }
    # Optional (issue #14): how to turn probabilities into calibrated confidences (tpnet.core.confidence) and
    # what the model was trained on and validated to do (docs/confidence.md, "Model card").
    if calibration is not None:
        meta["calibration"] = calibration
    if model_card is not None:
        meta["model_card"] = model_card
    # Optional (issue #16): which classes are trigger points and which are critical structures (absent: the
    # naming rule), and the needle-guidance settings the model was validated with.
    if roles is not None:
        meta["roles"] = roles
    if guidance is not None:
        meta["guidance"] = guidance
    validate_meta(meta, "build_meta")
    return meta


def validate_meta(meta: object, where: str | Path) -> dict:
    """Check format, version and the keys the inference tool relies on; raise ModelFileError naming ``where``."""
    if not isinstance(meta, dict):
        raise ModelFileError(f"{where}: {META_FILENAME} must hold a JSON object")
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{where}: not a tpnet model file (format {meta.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    major = _major_version(meta.get("format_version"), where)
    if major > FORMAT_VERSION:
        raise ModelFileError(
            f"{where}: format_version {meta['format_version']} is newer than this tool understands "
            f"({FORMAT_VERSION}); update tpnet"
        )
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelFileError(f"{where}: {META_FILENAME} lacks required key(s) {missing}")

    classes = meta["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ModelFileError(f"{where}: 'classes' must be a list of at least two class names")
    try:
        enc = Encoding.from_dict(meta["encoding"])
    except (AttributeError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{where}: bad 'encoding' ({exc})") from exc
    spacing = meta["spacing_mm"]
    if not isinstance(spacing, int | float) or not spacing > 0 or spacing == float("inf"):
        raise ModelFileError(f"{where}: 'spacing_mm' must be a positive number; got {spacing!r}")
    if not isinstance(meta["size_multiple"], int) or meta["size_multiple"] < 1:
        raise ModelFileError(
            f"{where}: 'size_multiple' must be a positive integer; got {meta['size_multiple']!r}"
        )
    post = meta["postprocess"]
    if not isinstance(post, dict) or any(not isinstance(post.get(k), int | float) for k in POSTPROCESS_KEYS):
        raise ModelFileError(f"{where}: 'postprocess' must give numbers for {list(POSTPROCESS_KEYS)}")
    if any(k in post and not isinstance(post[k], int | float) for k in OPTIONAL_POSTPROCESS_KEYS):
        raise ModelFileError(
            f"{where}: 'postprocess' optional keys {list(OPTIONAL_POSTPROCESS_KEYS)} must be numbers"
        )

    if "roles" in meta:
        try:
            parse_roles(meta["roles"], classes, str(where))
        except ContractError as exc:
            raise ModelFileError(str(exc)) from None
    if "guidance" in meta:
        guidance = meta["guidance"]
        if not isinstance(guidance, dict) or any(
            isinstance(v, bool) or not isinstance(v, int | float) for v in guidance.values()
        ):
            raise ModelFileError(f"{where}: 'guidance' must map GuidanceParams fields to numbers")
        try:
            GuidanceParams.from_dict(guidance)
        except ValueError as exc:
            raise ModelFileError(f"{where}: bad 'guidance' ({exc})") from None

    # The tensor description must agree with the encoding and classes it summarises.
    try:
        n_in = meta["network_data_format"]["inputs"]["image"]["num_channels"]
        n_out = meta["network_data_format"]["outputs"]["pred"]["num_channels"]
    except (KeyError, TypeError) as exc:
        raise ModelFileError(
            f"{where}: 'network_data_format' lacks inputs.image / outputs.pred ({exc})"
        ) from exc
    if n_in != enc.in_channels or n_out != len(classes):
        raise ModelFileError(
            f"{where}: network_data_format says {n_in} input / {n_out} output channels but encoding and "
            f"classes give {enc.in_channels} / {len(classes)}"
        )
    return meta


def _major_version(value: object, where: str | Path) -> int:
    try:
        return int(str(value).split(".")[0])
    except ValueError:
        raise ModelFileError(f"{where}: format_version {value!r} is not a version number") from None


def _detect_kind(path: Path, names: list[str]) -> str:
    """TorchScript archives hold ``<name>/constants.pkl``; torch.export archives ``<name>/archive_format``."""
    if any(n.endswith("/archive_format") for n in names):
        return "torch.export"
    if any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    raise ModelFileError(
        f"{path}: a zip file, but neither a TorchScript (.pt) nor a torch.export (.pt2) model"
    )


def read_meta(path: str | Path) -> tuple[dict, str]:
    """Validated metadata and the file kind ("torchscript" | "torch.export" | "onnx"), without loading the
    network. A zip archive is a torch format; anything else must parse as a self-contained ONNX model."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if not zipfile.is_zipfile(path):
        return _onnx_meta(path, _read_onnx_bytes(path)), "onnx"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            kind = _detect_kind(path, names)
            meta_names = [n for n in names if n.endswith(f"/extra/{META_FILENAME}")]
            if not meta_names:
                raise ModelFileError(f"{path}: no {META_FILENAME} inside; was it exported with tpnet-export?")
            raw = archive.read(meta_names[0])
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path}: damaged model file ({exc})") from exc
    return _parse_meta(raw, path), kind


def _parse_meta(raw: bytes | str, path: Path) -> dict:
    try:
        meta = json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: {META_FILENAME} is not valid JSON ({exc})") from exc
    return validate_meta(meta, path)


def _onnx_meta(path: Path, data: bytes) -> dict:
    """The metadata of an ONNX model's bytes, after the structural and external-data checks."""
    try:
        metadata = inspect_onnx(data)
    except OnnxFormatError as exc:
        raise ModelFileError(
            f"{path}: not a model file (neither TorchScript .pt, torch.export .pt2 nor ONNX .onnx: {exc})"
        ) from None
    except UnsafeModelError as exc:
        raise ModelFileError(f"{path}: refused, loading it would read other files: {exc}") from None
    if META_FILENAME not in metadata:
        raise ModelFileError(
            f"{path}: an ONNX model without {META_FILENAME} in its metadata_props; tpnet-infer needs the model's "
            "classes, encoding and pixel size from it: export the model with tpnet-export format=onnx"
        )
    return _parse_meta(metadata[META_FILENAME], path)


def _read_onnx_bytes(path: Path) -> bytes:
    # Size first: a video or disk image passed as --model must not be read into memory whole.
    size = path.stat().st_size
    if size > MAX_ONNX_BYTES:
        raise ModelFileError(
            f"{path}: not a model file (neither a zip archive (TorchScript .pt, torch.export .pt2) nor an ONNX "
            f"model: {size / 2**30:.1f} GiB is over ONNX's 2 GiB single-file limit)"
        )
    return _read_bytes(path)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc})") from exc


def load_model_file(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load and check a model file; raise ModelFileError naming the file if it cannot be used.

    ``device``: ``cpu``, ``cuda`` or ``auto`` (TorchScript / .pt2: CUDA when torch sees a GPU; ONNX: the CPU,
    see ``tpnet.core.device.onnxruntime_providers``). A device that cannot be used raises
    DeviceUnavailableError; a torch model where torch is not installed, ModelNeedsTorchError. The file is read once and inspected (``archive_safety``, ``onnx_model``) before
    torch or onnxruntime sees it, and they load those same bytes: a crafted file is refused without running
    any of its code."""
    path = Path(path)
    device = str(device)
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    if not zipfile.is_zipfile(path):
        return _load_onnx(path, device)
    meta, kind = read_meta(path)
    _require_torch(path, kind)
    device = torch_inference_device(device)
    data = _read_bytes(path)
    _refuse_unsafe_archive(path, data, kind)
    import torch

    try:
        with warnings.catch_warnings():
            # torch.jit deprecation notices mean nothing to a clinician running the tool.
            warnings.simplefilter("ignore", FutureWarning)
            if kind == "torchscript":
                module = torch.jit.load(io.BytesIO(data), map_location=device)
                module.eval()
            else:
                program = torch.export.load(io.BytesIO(data))
                module = program.module().to(device)  # exported graphs are already in eval mode
    except Exception as exc:  # torch raises RuntimeError and friends for damaged archives
        raise ModelFileError(
            f"{path}: could not load the {kind} network ({type(exc).__name__}: {exc})"
        ) from exc
    return LoadedModel(module=module, meta=meta, kind=kind, path=path, device=device)


def _load_onnx(path: Path, device: str) -> LoadedModel:
    data = _read_onnx_bytes(path)
    meta = _onnx_meta(path, data)
    providers = onnxruntime_providers(device)
    try:
        network = OnnxNetwork(data, providers)
    except OnnxFormatError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph / RuntimeException types
        raise ModelFileError(
            f"{path}: onnxruntime could not load the network ({type(exc).__name__}: {exc})"
        ) from exc
    if providers[0] not in network.providers:  # onnxruntime falls back to the CPU with a warning only
        raise DeviceUnavailableError(
            f"onnxruntime could not start {providers[0]} here (no usable GPU or CUDA libraries); use the CPU"
        )
    device = "cuda" if providers[0] == ONNX_CUDA else "cpu"
    return LoadedModel(module=network, meta=meta, kind="onnx", path=path, device=device)


def _require_torch(path: Path, kind: str) -> None:
    if missing_modules(EXTRAS["torch"][1]):
        label = "a TorchScript" if kind == "torchscript" else "a torch.export (.pt2)"
        raise ModelNeedsTorchError(
            f"{path} is {label} model, which needs PyTorch: {install_command('torch')}; or export it with "
            "tpnet-export format=onnx, which runs without PyTorch"
        )


def _torch_version() -> str:
    import torch

    return torch.__version__


def _refuse_unsafe_archive(path: Path, data: bytes, kind: str) -> None:
    check = check_torchscript_archive if kind == "torchscript" else check_pt2_archive
    try:
        check(data)
    except UnsafeModelError as exc:
        raise ModelFileError(f"{path}: refused, loading it could run code: {exc}") from None
    except (zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as exc:
        # AttributeError/KeyError: JSON of the wrong shape (e.g. a list where torch writes an object).
        raise ModelFileError(f"{path}: damaged {kind} archive ({type(exc).__name__}: {exc})") from None
