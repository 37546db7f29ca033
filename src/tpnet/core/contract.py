"""Dataset contract, version 2: ``dataset.yaml`` + ``manifest.csv`` + frames (and, since version 2, volumes)
below the root.

Version 2 (issue #17) adds volume rows: ``kind: volume`` names a 3-D B-mode file (a sweep of parallel frames)
with 3-D elastography and mask of the same shape, an in-plane ``spacing_mm`` and a ``slice_spacing_mm``. A
dataset declares ``contract_version: 2`` in dataset.yaml to use them; without the key it is version 1 and
loads exactly as before.

Only parsing and path safety live here; ``tpnet.core.contract_frames`` reads what a row points at (image or
DICOM frame, region crop, pixel size by precedence), ``check.py`` validates content, ``dataset.py`` loads it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from tpnet.core.plausibility import parse_spacing_mm

CONTRACT_VERSION = 2
CONTRACT_VERSIONS: tuple[int, ...] = (1, 2)
# Row kinds: a frame (a 2-D image, or one frame of a DICOM) or, from version 2, a volume (a 3-D file).
FRAME, VOLUME = "frame", "volume"
ROW_KINDS: tuple[str, ...] = (FRAME, VOLUME)
DEFAULT_CLASSES: tuple[str, ...] = ("background", "active_trp", "latent_trp", "vessel", "nerve")
ELASTO_UNITS: tuple[str, ...] = ("kPa", "m/s")
SPLITS: tuple[str, ...] = ("train", "val", "test")
BACKGROUND = "background"  # the name index 0 must have, unless dataset.yaml's background_class names it
REQUIRED_COLUMNS: tuple[str, ...] = ("sample_id", "subject_id", "bmode")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "elasto", "mask", "spacing_mm", "split", "frame", "kind", "slice_spacing_mm",
    # A longitudinal study's visit (ISO date or ordinal) and its event (issue #18; tpnet.inference.study).
    "visit", "event", "event_date", "event_notes",
)  # fmt: skip
# B-mode suffixes that are certainly not DICOM: a ``frame`` cell on such a row is refused while parsing. Other
# names (".dcm", no suffix as in DICOMDIR exports, UID-like "1.2.840...") are judged by the file's content.
NON_DICOM_IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp")
# What a class is FOR is declared by dataset.yaml's ``roles`` (issue #16): ``trp`` classes are trigger points
# (detected, counted, reported), ``critical`` classes are structures a needle must not touch (nerves, vessels).
# Without ``roles`` the defaults are the naming rule tpnet always had: a class whose name ends in "_trp" is a
# trigger-point class, and the classes named in DEFAULT_CRITICAL are critical. Every tool asks
# ``trp_class_indices`` / ``critical_class_indices`` with the roles it was given (dataset, model file).
TRP_SUFFIX = "_trp"
DEFAULT_CRITICAL: tuple[str, ...] = ("vessel", "nerve")
ROLE_NAMES: tuple[str, ...] = ("trp", "critical")


@dataclass(frozen=True)
class ClassRoles:
    """Class names per role. Names absent from a class list are ignored by the index functions, so one roles
    object serves a run whose sources each label part of the classes."""

    trp: tuple[str, ...]
    critical: tuple[str, ...]

    def to_dict(self) -> dict[str, list[str]]:
        return {"trp": list(self.trp), "critical": list(self.critical)}


def default_roles(classes: Sequence[str]) -> ClassRoles:
    """The naming rule: ``*_trp`` classes are trigger points, ``vessel`` and ``nerve`` are critical."""
    return ClassRoles(
        trp=tuple(c for c in classes if is_trp_class(c)),
        critical=tuple(c for c in classes if c in DEFAULT_CRITICAL),
    )


def parse_roles(raw: object, classes: Sequence[str], where: str) -> ClassRoles:
    """dataset.yaml's (or a model file's) ``roles`` mapping; a role left out keeps its default. Raises
    ContractError naming ``where`` for an unknown role, a name not in ``classes``, the background in a role, or
    a class in both roles."""
    defaults = default_roles(classes)
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: 'roles' must be a mapping like {{trp: [...], critical: [...]}}")
    unknown = sorted(set(raw) - set(ROLE_NAMES))
    if unknown:
        raise ContractError(f"{where}: unknown role(s) {unknown} in 'roles'; expected {list(ROLE_NAMES)}")
    chosen: dict[str, tuple[str, ...]] = {}
    for role in ROLE_NAMES:
        if role not in raw:
            chosen[role] = getattr(defaults, role)
            continue
        names = raw[role] if raw[role] is not None else []
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ContractError(f"{where}: roles.{role} must be a list of class names")
        missing = [n for n in names if n not in classes]
        if missing:
            raise ContractError(f"{where}: roles.{role} names {missing}, not in classes {list(classes)}")
        if classes and classes[0] in names:
            raise ContractError(f"{where}: roles.{role} names the background class {classes[0]!r}")
        chosen[role] = tuple(names)
    both = sorted(set(chosen["trp"]) & set(chosen["critical"]))
    if both:
        raise ContractError(f"{where}: {both} cannot be both a trigger point (trp) and a critical structure")
    return ClassRoles(trp=chosen["trp"], critical=chosen["critical"])


def is_trp_class(name: str, roles: ClassRoles | None = None) -> bool:
    return name in roles.trp if roles is not None else name.endswith(TRP_SUFFIX)


def trp_class_indices(classes: Sequence[str], roles: ClassRoles | None = None) -> list[int]:
    """Label indices of the trigger-point classes, in class order (``roles`` None: the naming rule)."""
    return [i for i, name in enumerate(classes) if is_trp_class(name, roles)]


def critical_class_indices(classes: Sequence[str], roles: ClassRoles | None = None) -> list[int]:
    """Label indices of the critical structures (nerves, vessels), in class order."""
    critical = (roles or default_roles(classes)).critical
    return [i for i, name in enumerate(classes) if name in critical]


class ContractError(ValueError):
    """The dataset breaks the contract; the message names the file or sample."""


# dataset.yaml ``generator.name`` of tpnet's synthetic generators (tpnet.data.synth, tpnet.data.synth_screenshots).
_TPNET_GENERATORS = ("tpnet.data.synth", "tpnet.data.synth_screenshots")


@dataclass(frozen=True)
class DatasetSpec:
    root: Path
    name: str
    classes: tuple[str, ...]
    elasto_unit: str
    spacing_mm: float | None
    # dataset.yaml's ``synthetic: true`` (tpnet-data synth writes it), or a tpnet generator block: frames made
    # by a generator, no patient behind them.
    synthetic: bool = False
    # dataset.yaml's ``roles`` (None = the naming rule); read it through ``class_roles``.
    roles: ClassRoles | None = None
    contract_version: int = 1
    slice_spacing_mm: float | None = None  # default mm between the slices of volume rows (version 2)

    @property
    def class_roles(self) -> ClassRoles:
        return self.roles if self.roles is not None else default_roles(self.classes)


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
    # 0-based frame of a multi-frame (cine) DICOM; None = the cell is empty or absent (frame 0). Last, with a
    # default, so rows built positionally before the column existed still construct.
    frame: int | None = None
    kind: str = FRAME  # "frame" or "volume" (contract version 2)
    slice_spacing_mm: float | None = None  # a volume row's mm between slices; None = the file's or dataset's
    # Set on the per-slice rows ``tpnet.data.volumes.slice_rows`` makes of a volume row: the slice this row
    # stands for (the training and evaluation loaders read frames, a volume row is many of them).
    slice_index: int | None = None
    volume_id: str | None = None  # ... and the volume row's sample_id it came from

    @property
    def is_volume(self) -> bool:
        return self.kind == VOLUME


def load_spec(root: str | Path) -> DatasetSpec:
    root = Path(root)
    path = root / "dataset.yaml"
    try:
        raw = yaml.safe_load(_read_text(path, "dataset.yaml")) or {}
    except yaml.YAMLError as exc:
        raise ContractError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: expected a mapping at top level")
    classes = _check_classes(raw.get("classes", list(DEFAULT_CLASSES)), raw.get("background_class"), path)
    unit = str(raw.get("elasto_unit", "kPa"))
    if unit not in ELASTO_UNITS:
        raise ContractError(f"{path}: unknown elasto_unit {unit!r}; expected one of {list(ELASTO_UNITS)}")
    spacing = raw.get("spacing_mm")
    if spacing is not None:
        spacing = _spacing_mm(spacing, f"{path}: spacing_mm")
    # Without the key, a generator block of tpnet's own generators still says so: data sets cached before the key
    # existed, and the screenshot generator's raw/ folder, which does not write it.
    generator = raw.get("generator")
    made_by_tpnet = isinstance(generator, dict) and generator.get("name") in _TPNET_GENERATORS
    synthetic = raw.get("synthetic", made_by_tpnet)
    if not isinstance(synthetic, bool):
        raise ContractError(f"{path}: synthetic must be true or false, got {synthetic!r}")
    roles = parse_roles(raw["roles"], classes, str(path)) if "roles" in raw else None
    version = raw.get("contract_version", 1)
    if isinstance(version, bool) or version not in CONTRACT_VERSIONS:
        raise ContractError(
            f"{path}: contract_version {version!r} is not one this tpnet reads; expected one of "
            f"{list(CONTRACT_VERSIONS)}"
        )
    slice_spacing = raw.get("slice_spacing_mm")
    if slice_spacing is not None:
        slice_spacing = _spacing_mm(slice_spacing, f"{path}: slice_spacing_mm")
    return DatasetSpec(
        root=root,
        name=str(raw.get("name", root.name)),
        classes=tuple(classes),
        elasto_unit=unit,
        spacing_mm=spacing,
        synthetic=synthetic,
        roles=roles,
        contract_version=int(version),
        slice_spacing_mm=slice_spacing,
    )


def read_manifest_raw(root: str | Path) -> list[dict[str, str]]:
    """Rows as dicts of stripped strings (extra columns kept); raises on a missing file or header."""
    path = Path(root) / "manifest.csv"
    reader = csv.DictReader(io.StringIO(_read_text(path, "manifest.csv"), newline=""))
    try:
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ContractError(f"{path}: header lacks required column(s) {missing}")
        # csv.DictReader would silently keep the last of two same-named columns.
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise ContractError(f"{path}: header repeats column(s) {repeated}; each column may appear once")
        reader.fieldnames = header
        return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except csv.Error as exc:  # NUL bytes, a field past the csv module's size limit
        raise ContractError(f"{path}: not a readable CSV file (line {reader.line_num}: {exc})") from exc


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
        spacing = _spacing_mm(spacing, f"{name}: spacing_mm")
    split = raw.get("split") or None
    if split is not None and split not in SPLITS:
        raise ContractError(f"{name}: split {split!r} is not one of {list(SPLITS)}")
    frame = _frame_index(raw.get("frame") or None, bmode, name)
    kind = raw.get("kind") or FRAME
    if kind not in ROW_KINDS:
        raise ContractError(f"{name}: kind {kind!r} is not one of {list(ROW_KINDS)}")
    slice_spacing = raw.get("slice_spacing_mm") or None
    if slice_spacing is not None:
        slice_spacing = _spacing_mm(slice_spacing, f"{name}: slice_spacing_mm")
    if kind == VOLUME and frame is not None:
        raise ContractError(f"{name}: a volume row has no frame; leave the frame cell empty")
    if kind == FRAME and slice_spacing is not None:
        raise ContractError(
            f"{name}: slice_spacing_mm is given on a frame row; set kind to volume for a 3-D file"
        )
    return ManifestRow(
        line=line,
        sample_id=sample_id,
        subject_id=subject_id,
        bmode=bmode,
        elasto=raw.get("elasto") or None,
        mask=raw.get("mask") or None,
        spacing_mm=spacing,
        split=split,
        frame=frame,
        kind=kind,
        slice_spacing_mm=slice_spacing,
    )


def _frame_index(cell: str | None, bmode: str, name: str) -> int | None:
    """The ``frame`` cell: empty = None (frame 0); else a whole number >= 0, and only on a DICOM row."""
    if cell is None:
        return None
    try:
        index = int(cell)  # "3" and "+3"; not "3.0", "1e1" or "three"
    except ValueError:
        raise ContractError(f"{name}: frame {cell!r} is not a whole number (0-based frame index)") from None
    if index < 0:
        raise ContractError(f"{name}: frame {index} is negative; frames count from 0")
    if Path(bmode).suffix.lower() in NON_DICOM_IMAGE_SUFFIXES:
        raise ContractError(
            f"{name}: frame {index} given, but bmode {bmode} is not a DICOM file; the frame column picks one "
            "frame of a multi-frame DICOM (leave it empty for other rows)"
        )
    return index


def load_manifest(root: str | Path) -> list[ManifestRow]:
    """All rows, parsed; the first malformed row raises (run ``tpnet-data check`` for the full list)."""
    return [parse_row(raw, line) for line, raw in enumerate(read_manifest_raw(root), start=2)]


def resolve_path(root: str | Path, relative: str) -> Path:
    """Resolve a manifest path; refuse absolute paths and anything that escapes the root (symlinks too)."""
    rel = Path(relative)
    if rel.is_absolute():
        raise ContractError(f"{relative}: absolute path; manifest paths must be relative to the dataset root")
    try:
        root_resolved = Path(root).resolve()
        full = (root_resolved / rel).resolve()
        full.exists()  # raises for a name too long for the file system (a missing file is reported on reading)
    except RuntimeError:  # pathlib's report of a symlink loop
        raise ContractError(f"{relative}: symbolic link loop") from None
    except OSError as exc:
        raise ContractError(f"{relative}: unusable path ({exc.strerror or exc})") from None
    if not full.is_relative_to(root_resolved):
        raise ContractError(f"{relative}: path escapes the dataset root {root_resolved}")
    return full


def check_row_kind(row: ManifestRow, spec: DatasetSpec) -> None:
    """A volume row needs a version-2 dataset: ContractError naming the sample otherwise (a version-1 reader
    would take the 3-D file for a frame)."""
    if row.is_volume and spec.contract_version < 2:
        raise ContractError(
            f"{row.sample_id}: a volume row (kind: volume) needs contract_version: 2 in dataset.yaml "
            f"(this dataset is version {spec.contract_version})"
        )


def volume_spacing_mm(row: ManifestRow, spec: DatasetSpec) -> tuple[float, float, float] | None:
    """A volume row's (slice_mm, row_mm, col_mm) from the manifest and dataset.yaml, or None when either the
    slice spacing or the pixel size is given by neither (the file's own is used then; a ``.npy`` has none)."""
    pixel = row.spacing_mm if row.spacing_mm is not None else spec.spacing_mm
    slice_mm = row.slice_spacing_mm if row.slice_spacing_mm is not None else spec.slice_spacing_mm
    if pixel is None or slice_mm is None:
        return None
    return (float(slice_mm), float(pixel), float(pixel))


def row_spacing_mm(row: ManifestRow, spec: DatasetSpec) -> float | None:
    """The row's pixel size from the manifest and dataset.yaml only (no file access). For a DICOM row the
    file's own calibration comes between the two: use ``contract_frames.row_spacing`` for that."""
    return row.spacing_mm if row.spacing_mm is not None else spec.spacing_mm


def _spacing_mm(value: object, what: str) -> float:
    try:
        return parse_spacing_mm(value)
    except ValueError as exc:
        raise ContractError(f"{what}: {exc}") from None


def _check_classes(classes: object, background: object, path: Path) -> tuple[str, ...]:
    """Mask value = list index, and every tool takes label 0 as background: a list that puts background
    elsewhere would make every background pixel a lesion."""
    if (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str) and c for c in classes)
    ):
        raise ContractError(f"{path}: 'classes' must be a list of at least two names (index 0 = background)")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ContractError(f"{path}: 'classes' names {repeated} more than once; class names must be unique")
    if background is not None and not isinstance(background, str):
        raise ContractError(f"{path}: 'background_class' must be a class name, got {background!r}")
    expected = background or BACKGROUND
    if classes[0] != expected:
        where = f"at index {classes.index(expected)}" if expected in classes else "missing"
        raise ContractError(
            f"{path}: class index 0 must be the background ({expected!r}, {where}); got {classes[0]!r}. "
            f"Put {expected!r} first (mask value 0), or name index 0 with 'background_class: <name>'"
        )
    if is_trp_class(expected):  # the naming rule; roles are checked by parse_roles
        raise ContractError(f"{path}: background class {expected!r} cannot be a trigger-point (_trp) class")
    return tuple(classes)


def _read_text(path: Path, what: str) -> str:
    """A contract file's text; ContractError naming the file when it is missing, unreadable or not UTF-8."""
    try:
        if not path.is_file():
            if path.is_symlink():
                raise ContractError(f"{path}: {what} is a broken or looping symbolic link")
            raise ContractError(f"{path}: missing {what}")
        data = path.read_bytes()
    except OSError as exc:  # a name too long, a symlink loop in a parent folder, no permission
        raise ContractError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")  # a BOM, as Excel writes, is not part of the first column's name
    except UnicodeDecodeError as exc:
        raise ContractError(
            f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
