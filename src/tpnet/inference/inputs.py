"""Finding the frames to analyse: a contract dataset root or a plain folder of ``<stem>_bmode.*`` files.

Discovery only lists files and decides each frame's pixel spacing; pixels are read lazily, one frame
at a time, by ``load_frame``, so a broken file rejects that frame and never the whole run.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpnet.core import contract
from tpnet.core.encoding import elasto_to_kpa
from tpnet.core.io import FrameReadError, declared_shape, read_bmode, read_elasto
from tpnet.core.plausibility import parse_spacing_mm, spacing_warnings, stiffness_problem
from tpnet.inference.output_names import bounded_stem

BMODE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy")
ELASTO_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy")  # kPa needs floats: no PNG
IMAGE_LIKE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp", ".dcm")
_NAME_RE = re.compile(r"^(?P<stem>.+)_(?P<role>bmode|elasto)(?P<suffix>\.[A-Za-z]+)$")


class InputError(ValueError):
    """The input as a whole is unusable (missing folder, broken dataset.yaml); names the path."""


class InputWarning(UserWarning):
    """Something about the input the reader of the results must know; listed in the summary and report."""


class SpacingAssumedWarning(InputWarning):
    """Some frames carry no pixel spacing: the model's training spacing is assumed for them."""


class ImplausibleSpacingWarning(InputWarning):
    """Some frames' pixel size or field of view looks wrong (a unit slip?); ``strict`` rejects them instead."""


STRICT_NOTE = "rejected by --strict"
_LISTED_NAMES = 5  # a warning about many frames names the first few


@dataclass(frozen=True)
class FrameInput:
    """One frame to analyse. ``stem`` names its outputs; ``name`` is how reports refer to it."""

    stem: str
    name: str
    bmode_path: Path
    elasto_path: Path | None
    spacing_mm: float
    spacing_source: str  # "manifest", "dataset.yaml", "sidecar", "cli" or "model"
    elasto_unit: str = "kPa"


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str


def load_frame(frame: FrameInput, notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(B-mode float32 [0, 1], elastography kPa or None); FrameReadError names the file and the reason.
    What was assumed while reading (a guessed bit depth, clipped values) is appended to ``notes`` when given
    (thread-safe, unlike ``warnings``), else warned."""
    bmode = read_bmode(frame.bmode_path, on_rescale=notes.append if notes is not None else None)
    if frame.elasto_path is None:
        return bmode, None
    stored = read_elasto(frame.elasto_path, "kPa")  # as stored: the sign is checked before conversion
    if stored.shape != bmode.shape:
        raise FrameReadError(
            f"{frame.elasto_path}: elastography is {stored.shape[1]}x{stored.shape[0]} px but its "
            f"B-mode {frame.bmode_path.name} is {bmode.shape[1]}x{bmode.shape[0]} px"
        )
    # The rule tpnet-data check and training apply: such a map would put -50 or 1e7 kPa in the report.
    problem = stiffness_problem(stored, frame.elasto_unit)
    if problem is not None:
        raise FrameReadError(f"{frame.elasto_path}: {problem}")
    return bmode, elasto_to_kpa(stored, frame.elasto_unit)


def discover_inputs(
    input_dir: str | Path, spacing_mm_cli: float | None, model_spacing_mm: float, strict: bool = False
) -> tuple[list[FrameInput], list[Rejection]]:
    """Frames (sorted by stem) and rejected inputs. Spacing precedence: the input's own (manifest row,
    dataset.yaml or ``<stem>.json`` sidecar), then ``--spacing-mm``, then the model's training spacing,
    which raises one ``SpacingAssumedWarning`` for the whole run. A frame whose pixel size or field of view
    is implausible, or far from the model's spacing, raises an ``ImplausibleSpacingWarning`` naming it, or
    with ``strict`` is rejected."""
    input_dir = Path(input_dir)
    try:
        if not input_dir.is_dir():
            raise InputError(f"{input_dir}: input folder not found")
        if spacing_mm_cli is not None:
            spacing_mm_cli = parse_spacing_mm(spacing_mm_cli)
    except OSError as exc:  # a name too long for the file system, a symlink loop above it
        raise InputError(f"{input_dir}: unusable input folder ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"--spacing-mm: {exc}") from None
    # lexists: a dataset root whose dataset.yaml is a broken link is reported as such, not read as a folder.
    if os.path.lexists(input_dir / "manifest.csv") and os.path.lexists(input_dir / "dataset.yaml"):
        frames, rejected = _discover_contract(input_dir, spacing_mm_cli, model_spacing_mm)
    else:
        frames, rejected = _discover_folder(input_dir, spacing_mm_cli, model_spacing_mm)
    frames = _check_spacing(frames, rejected, model_spacing_mm, strict)
    assumed = sum(f.spacing_source == "model" for f in frames)
    if assumed:
        warnings.warn(
            SpacingAssumedWarning(
                f"{assumed} frame(s) have no pixel spacing (no sidecar <stem>.json, no --spacing-mm): "
                f"millimetre figures for them assume the model's training spacing of {model_spacing_mm:g} mm/pixel"
            ),
            stacklevel=2,
        )
    return frames, rejected


def _check_spacing(
    frames: list[FrameInput], rejected: list[Rejection], model_spacing_mm: float, strict: bool
) -> list[FrameInput]:
    """Apply the plausibility rules to each frame's pixel size and field of view: one warning per distinct
    reason, naming its frames, or (strict) a rejection per frame. Returns the frames still to analyse."""
    kept: list[FrameInput] = []
    names_by_reason: dict[str, list[str]] = {}
    for frame in frames:
        # An assumed spacing is the model's own: only its field of view can be judged.
        reference = None if frame.spacing_source == "model" else model_spacing_mm
        reasons = spacing_warnings(frame.spacing_mm, declared_shape(frame.bmode_path), reference)
        if reasons and strict:
            rejected.append(Rejection(frame.name, f"{'; '.join(reasons)} ({STRICT_NOTE})"))
            continue
        for reason in reasons:
            names_by_reason.setdefault(reason, []).append(frame.name)
        kept.append(frame)
    for reason, names in names_by_reason.items():
        more = len(names) - _LISTED_NAMES
        shown = ", ".join(names[:_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")
        warnings.warn(
            ImplausibleSpacingWarning(
                f"{shown}: {reason}; check the pixel size (sidecar, manifest or --spacing-mm), "
                f"or run with --strict to reject such frames"
            ),
            stacklevel=3,
        )
    return kept


def _fallback_spacing(spacing_mm_cli: float | None, model_spacing_mm: float) -> tuple[float, str]:
    if spacing_mm_cli is not None:
        return float(spacing_mm_cli), "cli"
    return float(model_spacing_mm), "model"


def _safe_stem(name: str) -> str:
    """Sample ids may hold '/' or spaces and be any length; output file names may not."""
    return bounded_stem(re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "frame")


def _discover_contract(
    root: Path, spacing_mm_cli: float | None, model_spacing_mm: float
) -> tuple[list[FrameInput], list[Rejection]]:
    try:
        spec = contract.load_spec(root)
        raw_rows = contract.read_manifest_raw(root)
    except contract.ContractError as exc:
        raise InputError(str(exc)) from exc
    frames: list[FrameInput] = []
    rejected: list[Rejection] = []
    stems: set[str] = set()
    for line, raw in enumerate(raw_rows, start=2):
        name = raw.get("sample_id") or f"manifest.csv line {line}"
        try:
            row = contract.parse_row(raw, line)
            bmode_path = contract.resolve_path(root, row.bmode)
            elasto_path = contract.resolve_path(root, row.elasto) if row.elasto else None
        except contract.ContractError as exc:
            rejected.append(Rejection(name, str(exc)))
            continue
        stem = _safe_stem(row.sample_id)
        if stem in stems:
            rejected.append(Rejection(name, f"sample_id gives the output name {stem!r} a second time"))
            continue
        stems.add(stem)
        spacing = contract.row_spacing_mm(row, spec)
        if spacing is not None:
            source = "manifest" if row.spacing_mm is not None else "dataset.yaml"
        else:
            spacing, source = _fallback_spacing(spacing_mm_cli, model_spacing_mm)
        frames.append(
            FrameInput(stem, row.sample_id, bmode_path, elasto_path, spacing, source, spec.elasto_unit)
        )
    return sorted(frames, key=lambda f: f.stem), rejected


def _discover_folder(
    folder: Path, spacing_mm_cli: float | None, model_spacing_mm: float
) -> tuple[list[FrameInput], list[Rejection]]:
    bmodes: dict[str, list[Path]] = {}
    elastos: dict[str, list[Path]] = {}
    rejected: list[Rejection] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise InputError(f"{folder}: cannot list the input folder ({exc.strerror or exc})") from None
    for path in entries:
        if path.name.startswith("."):
            continue
        if path.is_symlink() and not path.exists():  # is_file() would silently skip it
            if _NAME_RE.match(path.name) or path.suffix.lower() in IMAGE_LIKE_SUFFIXES:
                rejected.append(Rejection(path.name, "broken or looping symbolic link"))
            continue
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        match = _NAME_RE.match(path.name)
        if match and match["role"] == "bmode" and suffix in BMODE_SUFFIXES:
            bmodes.setdefault(match["stem"], []).append(path)
        elif match and match["role"] == "elasto" and suffix in ELASTO_SUFFIXES:
            elastos.setdefault(match["stem"], []).append(path)
        elif match and match["role"] == "elasto":
            rejected.append(Rejection(path.name, f"elastography must be TIFF or .npy in kPa, not {suffix}"))
        elif suffix in IMAGE_LIKE_SUFFIXES:
            rejected.append(
                Rejection(
                    path.name, "not named <name>_bmode.<png|tif|tiff|npy> or <name>_elasto.<tif|tiff|npy>"
                )
            )
        # Anything else (sidecar .json, notes, spreadsheets) is not an image: ignored.

    for stem, paths in elastos.items():
        if stem not in bmodes:
            rejected.extend(
                Rejection(p.name, f"elastography without a B-mode image {stem}_bmode.*") for p in paths
            )

    frames: list[FrameInput] = []
    for stem in sorted(bmodes):
        name = bmodes[stem][0].name
        candidates = bmodes[stem] + elastos.get(stem, [])
        if len(bmodes[stem]) > 1 or len(elastos.get(stem, [])) > 1:
            rejected.append(
                Rejection(name, f"ambiguous: several files for {stem!r}: {[p.name for p in candidates]}")
            )
            continue
        try:
            spacing, source = _sidecar_spacing(folder / f"{stem}.json")
        except InputError as exc:
            rejected.append(Rejection(name, str(exc)))
            continue
        if spacing is None:
            spacing, source = _fallback_spacing(spacing_mm_cli, model_spacing_mm)
        elasto = elastos[stem][0] if stem in elastos else None
        frames.append(FrameInput(stem, name, bmodes[stem][0], elasto, spacing, source))
    return frames, rejected


def _sidecar_spacing(path: Path) -> tuple[float | None, str]:
    """``{"spacing_mm": S}`` from ``<stem>.json``; (None, "") when there is no sidecar."""
    if not path.is_file():
        return None, ""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name}: unreadable sidecar ({exc})") from exc
    if not isinstance(data, dict) or "spacing_mm" not in data:
        raise InputError(f'{path.name}: sidecar must be {{"spacing_mm": <positive number>}}')
    try:
        spacing = parse_spacing_mm(data["spacing_mm"])  # refuses true, "fine", -2, 1e9
    except ValueError as exc:
        raise InputError(f"{path.name}: spacing_mm {exc}") from None
    return spacing, "sidecar"
