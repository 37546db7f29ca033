"""Finding the frames to analyse: a contract dataset root or a plain folder of ``<stem>_bmode.*`` files.

Discovery only lists files and decides each frame's pixel spacing; pixels are read lazily, one frame
at a time, by ``load_frame``, so a broken file rejects that frame and never the whole run.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tpnet.data import contract
from tpnet.data.io import FrameReadError, read_bmode, read_elasto

BMODE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy")
ELASTO_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy")  # kPa needs floats: no PNG
IMAGE_LIKE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp", ".dcm")
_NAME_RE = re.compile(r"^(?P<stem>.+)_(?P<role>bmode|elasto)(?P<suffix>\.[A-Za-z]+)$")


class InputError(ValueError):
    """The input as a whole is unusable (missing folder, broken dataset.yaml); names the path."""


class SpacingAssumedWarning(UserWarning):
    """Some frames carry no pixel spacing: the model's training spacing is assumed for them."""


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


def load_frame(frame: FrameInput) -> tuple[np.ndarray, np.ndarray | None]:
    """(B-mode float32 [0, 1], elastography kPa or None); FrameReadError names the file and the reason."""
    bmode = read_bmode(frame.bmode_path)
    if frame.elasto_path is None:
        return bmode, None
    elasto_kpa = read_elasto(frame.elasto_path, frame.elasto_unit)
    if elasto_kpa.shape != bmode.shape:
        raise FrameReadError(
            f"{frame.elasto_path}: elastography is {elasto_kpa.shape[1]}x{elasto_kpa.shape[0]} px but its "
            f"B-mode {frame.bmode_path.name} is {bmode.shape[1]}x{bmode.shape[0]} px"
        )
    return bmode, elasto_kpa


def discover_inputs(
    input_dir: str | Path, spacing_mm_cli: float | None, model_spacing_mm: float
) -> tuple[list[FrameInput], list[Rejection]]:
    """Frames (sorted by stem) and rejected inputs. Spacing precedence: the input's own (manifest row,
    dataset.yaml or ``<stem>.json`` sidecar), then ``--spacing-mm``, then the model's training spacing,
    which raises one ``SpacingAssumedWarning`` for the whole run."""
    input_dir = Path(input_dir)
    if not input_dir.is_dir():
        raise InputError(f"{input_dir}: input folder not found")
    if (input_dir / "manifest.csv").is_file() and (input_dir / "dataset.yaml").is_file():
        frames, rejected = _discover_contract(input_dir, spacing_mm_cli, model_spacing_mm)
    else:
        frames, rejected = _discover_folder(input_dir, spacing_mm_cli, model_spacing_mm)
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


def _fallback_spacing(spacing_mm_cli: float | None, model_spacing_mm: float) -> tuple[float, str]:
    if spacing_mm_cli is not None:
        return float(spacing_mm_cli), "cli"
    return float(model_spacing_mm), "model"


def _safe_stem(name: str) -> str:
    """Sample ids may hold '/' or spaces; output file names may not."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "frame"


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
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
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
        data = json.loads(path.read_text())
        spacing = float(data["spacing_mm"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path.name}: unreadable sidecar ({exc})") from exc
    except (KeyError, TypeError, ValueError):
        raise InputError(f'{path.name}: sidecar must be {{"spacing_mm": <positive number>}}') from None
    if not spacing > 0 or spacing == float("inf"):
        raise InputError(f"{path.name}: spacing_mm must be a positive number; got {spacing!r}")
    return spacing, "sidecar"
