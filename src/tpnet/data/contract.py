"""Dataset contract, version 1: ``dataset.yaml`` + ``manifest.csv`` + frames below the root.

Only parsing and path safety live here; ``check.py`` validates content, ``dataset.py`` loads it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

CONTRACT_VERSION = 1
DEFAULT_CLASSES: tuple[str, ...] = ("background", "active_trp", "latent_trp", "vessel")
ELASTO_UNITS: tuple[str, ...] = ("kPa", "m/s")
SPLITS: tuple[str, ...] = ("train", "val", "test")
REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "subject_id", "bmode")
OPTIONAL_COLUMNS: tuple[str, ...] = ("elasto", "mask", "spacing_mm", "split")
TISSUE_DENSITY_KG_M3 = 1000.0  # soft tissue, as used by every SWE scanner for E = 3 * rho * c^2


class ContractError(ValueError):
    """The dataset breaks the contract; the message names the file or sample."""


@dataclass(frozen=True)
class DatasetSpec:
    root: Path
    name: str
    classes: tuple[str, ...]
    elasto_unit: str
    spacing_mm: float | None


@dataclass(frozen=True)
class ManifestRow:
    """One manifest line, paths still relative to the root (resolve with ``resolve_path``)."""

    line: int
    sample_id: str
    subject_id: str
    bmode: str
    elasto: str | None
    mask: str | None
    spacing_mm: float | None
    split: str | None


def load_spec(root: str | Path) -> DatasetSpec:
    root = Path(root)
    path = root / "dataset.yaml"
    if not path.is_file():
        raise ContractError(f"{path}: missing dataset.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a mapping at top level")
    classes = raw.get("classes", list(DEFAULT_CLASSES))
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise ContractError(f"{path}: 'classes' must be a list of at least two names (index 0 = background)")
    unit = str(raw.get("elasto_unit", "kPa"))
    if unit not in ELASTO_UNITS:
        raise ContractError(f"{path}: unknown elasto_unit {unit!r}; expected one of {list(ELASTO_UNITS)}")
    spacing = raw.get("spacing_mm")
    if spacing is not None:
        spacing = _positive_float(spacing, f"{path}: spacing_mm")
    return DatasetSpec(
        root=root,
        name=str(raw.get("name", root.name)),
        classes=tuple(classes),
        elasto_unit=unit,
        spacing_mm=spacing,
    )


def read_manifest_raw(root: str | Path) -> list[dict[str, str]]:
    """Rows as dicts of stripped strings (extra columns kept); raises on a missing file or header."""
    path = Path(root) / "manifest.csv"
    if not path.is_file():
        raise ContractError(f"{path}: missing manifest.csv")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ContractError(f"{path}: header lacks required column(s) {missing}")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]


def parse_row(raw: dict[str, str], line: int) -> ManifestRow:
    """Parse one raw row; raises ContractError naming the sample for malformed fields."""
    sample_id = raw.get("sample_id", "")
    name = sample_id or f"manifest line {line}"
    if not sample_id:
        raise ContractError(f"{name}: empty sample_id")
    subject_id = raw.get("subject_id", "")
    if not subject_id:
        raise ContractError(f"{name}: empty subject_id")
    bmode = raw.get("bmode", "")
    if not bmode:
        raise ContractError(f"{name}: empty bmode path")
    spacing = raw.get("spacing_mm") or None
    if spacing is not None:
        spacing = _positive_float(spacing, f"{name}: spacing_mm")
    split = raw.get("split") or None
    if split is not None and split not in SPLITS:
        raise ContractError(f"{name}: split {split!r} is not one of {list(SPLITS)}")
    return ManifestRow(
        line=line,
        sample_id=sample_id,
        subject_id=subject_id,
        bmode=bmode,
        elasto=raw.get("elasto") or None,
        mask=raw.get("mask") or None,
        spacing_mm=spacing,
        split=split,
    )


def load_manifest(root: str | Path) -> list[ManifestRow]:
    """All rows, parsed; the first malformed row raises (run ``tpnet-data check`` for the full list)."""
    return [parse_row(raw, line) for line, raw in enumerate(read_manifest_raw(root), start=2)]


def resolve_path(root: str | Path, relative: str) -> Path:
    """Resolve a manifest path; refuse absolute paths and anything that escapes the root (symlinks too)."""
    root_resolved = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute():
        raise ContractError(f"{relative}: absolute path; manifest paths must be relative to the dataset root")
    full = (root_resolved / rel).resolve()
    if not full.is_relative_to(root_resolved):
        raise ContractError(f"{relative}: path escapes the dataset root {root_resolved}")
    return full


def row_spacing_mm(row: ManifestRow, spec: DatasetSpec) -> float | None:
    return row.spacing_mm if row.spacing_mm is not None else spec.spacing_mm


def _positive_float(value: object, what: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{what}: {value!r} is not a number") from exc
    if not out > 0 or out != out or out == float("inf"):
        raise ContractError(f"{what}: {value!r} must be a positive finite number")
    return out
