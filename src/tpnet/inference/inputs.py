"""Finding the frames to analyse: a contract dataset root, or a folder (nested folders too) of what scanners
and people export: DICOM stills and cine loops, scanner screenshots (with a ``--profile``), plain images, and
``<stem>_bmode.*`` + ``<stem>_elasto.*`` pairs.

Discovery only lists files, reads DICOM headers (never pixels) and decides each frame's pixel spacing; pixels
are read lazily, one frame at a time, by ``load_frame``, so a broken file rejects that frame (or that file) and
never the whole run.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tpnet.core import contract
from tpnet.core.dicom import DicomHeader, is_dicom_file, read_dicom_frame, read_dicom_header
from tpnet.core.encoding import elasto_to_kpa
from tpnet.core.input_check import spacing_warnings
from tpnet.core.io import (
    COLOURED_NOTE_FRACTION,
    GREY_CHANNEL_TOLERANCE,
    FrameReadError,
    declared_shape,
    read_bmode,
    read_elasto,
)
from tpnet.core.plausibility import parse_spacing_mm, stiffness_problem
from tpnet.core.scanner_profile import ScannerProfile, read_screenshot
from tpnet.inference.output_names import bounded_stem
from tpnet.inference.study import VisitInfo, parse_date, visit_info
from tpnet.inference.sweep_inputs import dicom_states_slice_spacing, is_volume_file, sweep_frames, volume_stem

BMODE_SUFFIXES: tuple[str, ...] = (".png", ".tif", ".tiff", ".npy", ".jpg", ".jpeg", ".bmp")
ELASTO_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".npy")  # kPa needs floats: no PNG
# With --profile these are scanner screenshots (unless named *_bmode / *_elasto); TIFF and .npy never are.
SCREENSHOT_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")
DICOM_SUFFIXES: tuple[str, ...] = (".dcm", ".dicom")
IMAGE_LIKE_SUFFIXES: tuple[str, ...] = BMODE_SUFFIXES + DICOM_SUFFIXES
_NAME_RE = re.compile(r"^(?P<stem>.+)_(?P<role>bmode|elasto)(?P<suffix>\.[A-Za-z]+)$")
# sub/folder/img.png -> stem "sub__folder__img": two img.png in two folders never collide.
PATH_SEPARATOR = "__"
NOT_IMAGES = ("DICOMDIR",)  # a DICOM export's index of its files: no pixels of its own
SWEEP_LABEL_SUFFIXES = ("_mask", "_labels", "_seg")  # label volumes beside a sweep: not images to analyse


class InputError(ValueError):
    """The input as a whole is unusable (missing folder, broken dataset.yaml); names the path."""


class InputWarning(UserWarning):
    """Something about the input the reader of the results must know; listed in the summary and report."""


class SpacingUnknownWarning(InputWarning):
    """Some frames carry no pixel size anywhere: their millimetre columns are left empty."""


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
    spacing_mm: float | None  # None: the pixel size is unknown, so no millimetre figure is given
    # "manifest", "dataset.yaml", "sidecar", "dicom", "profile", "cli" or "" (unknown)
    spacing_source: str
    elasto_unit: str = "kPa"
    kind: str = (
        "image"  # "image" (PNG/TIFF/.npy/JPEG/BMP), "dicom", "screenshot" or "sweep" (a 3-D file's slice)
    )
    frame_index: int | None = None  # a DICOM file's frame (0-based)
    t_s: float | None = None  # the frame's time in its cine loop, s from the first frame
    loop: str | None = None  # the stem of the multi-frame file (cine loop) the frame belongs to
    # (x0, y0, x1, y1): the part of the frame holding the image (a DICOM ultrasound region); the network sees
    # only it and its results are placed back into the whole frame. None = the whole frame.
    image_box: tuple[int, int, int, int] | None = None
    shape: tuple[int, int] | None = None  # (H, W) as discovery learnt it (DICOM header, profile), if it did
    profile: ScannerProfile | None = None  # screenshots: where the views and the colour bar are
    subject_id: str | None = None  # the dataset manifest's subject_id (None: not a dataset, or not known)
    # kind "sweep": slice ``slice_index`` of ``slice_count`` of the 3-D file ``bmode_path`` (issue #17), whose
    # outputs are named after ``sweep``; ``slice_spacing_mm`` is the mm between its slices.
    sweep: str | None = None
    slice_index: int | None = None
    slice_count: int | None = None
    slice_spacing_mm: float | None = None
    # Which visit of ``subject_id`` the frame is (issue #18): study.csv, the manifest's visit column or DICOM
    # StudyDate (tpnet.inference.study); None: not known.
    visit: VisitInfo | None = None


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: str
    # Whose visit it was, where the input says (a manifest row, a study.csv line): a longitudinal run names the
    # missing visit on that patient's page.
    subject_id: str | None = None
    visit: str | None = None


def load_frame(frame: FrameInput, notes: list[str] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """(B-mode float32 [0, 1], elastography kPa or None) for the whole frame; FrameReadError names the file
    and the reason. What was assumed while reading (a guessed bit depth, clipped values, a few coloured
    pixels read as grey) is appended to ``notes`` when given (thread-safe, unlike ``warnings``), else warned."""
    if frame.kind == "sweep":
        from tpnet.inference.sweep_inputs import load_sweep_slice  # nibabel / pynrrd load for sweeps only

        return load_sweep_slice(frame)
    if frame.kind == "dicom":
        dicom_frame = read_dicom_frame(frame.bmode_path, frame.frame_index or 0)
        if dicom_frame.rgb is not None and notes is not None:
            note = _colour_note(frame, dicom_frame.rgb)
            if note:
                notes.append(note)
        return dicom_frame.grey, None
    if frame.kind == "screenshot":
        if frame.profile is None:
            raise FrameReadError(f"{frame.bmode_path}: a screenshot needs a scanner profile (--profile)")
        shot = read_screenshot(frame.bmode_path, frame.profile)
        if notes is not None:
            notes.extend(shot.notes)
        return shot.bmode, shot.elasto_kpa
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


def _colour_note(frame: FrameInput, rgb: np.ndarray) -> str | None:
    """A colour DICOM frame is read as luma; say so when its image region holds real colour (a Doppler or SWE
    map would otherwise pass unnoticed as grey)."""
    if frame.image_box is not None:
        x0, y0, x1, y1 = frame.image_box
        rgb = rgb[y0:y1, x0:x1]
    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    fraction = float(np.count_nonzero(spread > GREY_CHANNEL_TOLERANCE)) / max(spread.size, 1)
    if fraction <= COLOURED_NOTE_FRACTION:
        return None
    if frame.loop is not None:  # one note for the loop's file (the same text for every frame: shown once)
        where, share = (
            frame.name.rsplit(" frame ", 1)[0],
            f"its frames hold colour (over {COLOURED_NOTE_FRACTION:.0%}",
        )
    else:
        where, share = frame.name, f"{fraction:.1%} of the image is coloured ("
    return (
        f"{where}: {share} of the image region; colour Doppler or elastography?); read as grey (luma): "
        "colour in DICOM frames is not decoded to kPa"
    )


def discover_inputs(
    input_dir: str | Path,
    spacing_mm_cli: float | None,
    model_spacing_mm: float,
    strict: bool = False,
    profile: ScannerProfile | None = None,
    patient_ids: bool = False,
) -> tuple[list[FrameInput], list[Rejection]]:
    """Frames (sorted by stem) and rejected inputs. Spacing precedence: the input's own (manifest row,
    DICOM file, dataset.yaml, ``<stem>.json`` sidecar, or the scanner profile for screenshots), then
    ``--spacing-mm``; a frame with none keeps ``spacing_mm=None`` (its millimetre figures stay empty) and
    the run gets one ``SpacingUnknownWarning`` naming such frames. A frame whose pixel size or field of view
    is implausible, or far from the model's spacing, raises an ``ImplausibleSpacingWarning`` naming it, or
    with ``strict`` is rejected. ``patient_ids``: DICOM files' PatientID and StudyDate become the frames'
    subject and visit (a longitudinal run); otherwise they are not read into the results (PatientID is a
    patient's identity: a plain run's frames.csv and summary must not carry it)."""
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
        frames, rejected = _discover_contract(input_dir, spacing_mm_cli)
        if not patient_ids:  # the manifest's subject stays; a visit from StudyDate goes
            frames = [replace(f, visit=None) if _visit_from_dicom(f) else f for f in frames]
    else:
        frames, rejected = _discover_folder(input_dir, spacing_mm_cli, profile)
        if not patient_ids:  # a folder's DICOM subject is always its PatientID
            frames = [replace(f, subject_id=None, visit=None) if f.kind == "dicom" else f for f in frames]
    frames = _check_spacing(frames, rejected, model_spacing_mm, strict)
    unknown = [f.name for f in frames if f.spacing_mm is None]
    if unknown:
        warnings.warn(
            SpacingUnknownWarning(
                f"{len(unknown)} frame(s) have no pixel size (not in the file, no sidecar <stem>.json, no "
                f"profile, no --spacing-mm), e.g. {_names(unknown)}: their millimetre columns are left empty "
                f"and the network reads them as if at its training spacing of {model_spacing_mm:g} mm/pixel"
            ),
            stacklevel=2,
        )
    return frames, rejected


def _names(names: list[str]) -> str:
    more = len(names) - _LISTED_NAMES
    return ", ".join(names[:_LISTED_NAMES]) + (f" and {more} more" if more > 0 else "")


def _check_spacing(
    frames: list[FrameInput], rejected: list[Rejection], model_spacing_mm: float, strict: bool
) -> list[FrameInput]:
    """Apply the plausibility rules to each frame's pixel size and field of view: one warning per distinct
    reason, naming its frames, or (strict) a rejection per frame. Returns the frames still to analyse."""
    kept: list[FrameInput] = []
    names_by_reason: dict[str, list[str]] = {}
    for frame in frames:
        if frame.spacing_mm is None:  # nothing to judge: the frame is flagged as without a pixel size
            kept.append(frame)
            continue
        shape = frame.shape or declared_shape(frame.bmode_path)
        found = spacing_warnings(frame.spacing_mm, shape, model_spacing_mm)
        if found and strict:
            codes = "; ".join(f"{w.code} ({w.message})" for w in found)
            rejected.append(Rejection(frame.name, f"{STRICT_NOTE}: {codes}"))
            continue
        for warning in found:
            names_by_reason.setdefault(warning.message, []).append(frame.name)
        kept.append(frame)
    for reason, names in names_by_reason.items():
        warnings.warn(
            ImplausibleSpacingWarning(
                f"{_names(names)}: {reason}; check the pixel size (sidecar, manifest or --spacing-mm), "
                f"or run with --strict to reject such frames"
            ),
            stacklevel=3,
        )
    return kept


def _safe_stem(name: str) -> str:
    """Sample ids may hold '/' or spaces and be any length; output file names may not."""
    return bounded_stem(re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "frame")


def _dicom_frames(
    path: Path, stem: str, name: str, spacing: tuple[float | None, str], frame_index: int | None = None
) -> list[FrameInput]:
    """One FrameInput per frame of a DICOM file (``frame_index``: only that one). ``spacing`` is the pixel
    size decided before the file's own (a manifest row's); (None, "") lets the file's own count first.
    FrameReadError when the header is unusable or the index is out of range."""
    header = read_dicom_header(path)
    for note in header.notes:  # e.g. a region clipped to the frame: the reader of the results must know
        warnings.warn(InputWarning(f"{name}: {note}"), stacklevel=4)
    spacing_mm, source = spacing
    if spacing_mm is None and header.spacing_mm is not None:
        spacing_mm, source = header.spacing_mm, "dicom"
    indices = range(header.n_frames) if frame_index is None else [frame_index]
    if frame_index is not None and not 0 <= frame_index < header.n_frames:
        raise FrameReadError(f"{path}: frame {frame_index} asked for, but the file holds {header.n_frames}")
    multi = header.n_frames > 1
    subject_id, visit = _dicom_visit(header)
    return [
        FrameInput(
            stem=f"{stem}_f{i:04d}" if multi else stem,
            name=f"{name} frame {i}" if multi else name,
            bmode_path=path,
            elasto_path=None,
            spacing_mm=spacing_mm,
            spacing_source=source if spacing_mm is not None else "",
            kind="dicom",
            frame_index=i,
            t_s=_frame_time(header, i),
            loop=stem if multi else None,
            image_box=header.image_box,
            shape=_box_shape(header),
            subject_id=subject_id,
            visit=visit,
        )
        for i in indices
    ]


def _visit_from_dicom(frame: FrameInput) -> bool:
    return frame.visit is not None and frame.visit.source == "dicom"


def _dicom_visit(header: DicomHeader) -> tuple[str | None, VisitInfo | None]:
    """(PatientID, its visit by StudyDate) when the file has both; a StudyDate that is no date gives no visit
    and no error (only longitudinal runs need it). (None, None) when either is missing."""
    if not (header.patient_id and header.study_date):
        return None, None
    try:
        return header.patient_id, VisitInfo(parse_date(header.study_date), source="dicom")
    except ValueError:
        return header.patient_id, None


def _frame_time(header: DicomHeader, index: int) -> float | None:
    times = header.frame_times_s
    return float(times[index]) if times is not None and index < len(times) else None


def _box_shape(header: DicomHeader) -> tuple[int, int]:
    """What the network sees: the image region's (H, W), else the frame's."""
    if header.image_box is None:
        return header.rows, header.columns
    x0, y0, x1, y1 = header.image_box
    return y1 - y0, x1 - x0


def _discover_contract(root: Path, spacing_mm_cli: float | None) -> tuple[list[FrameInput], list[Rejection]]:
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
            visit = _manifest_visit(raw)
        except contract.ContractError as exc:
            rejected.append(_row_rejection(name, str(exc), raw))
            continue
        except ValueError as exc:
            rejected.append(_row_rejection(name, f"manifest.csv {exc}", raw))
            continue
        stem = _safe_stem(row.sample_id)
        if stem in stems:
            rejected.append(Rejection(name, f"sample_id gives the output name {stem!r} a second time"))
            continue
        stems.add(stem)
        if row.is_volume:  # a sweep (contract version 2): one frame per slice
            try:
                contract.check_row_kind(row, spec)
                slices = sweep_frames(
                    bmode_path, elasto_path, stem, row.sample_id,
                    spacing_mm=contract.volume_spacing_mm(row, spec), spacing_source="manifest",
                    elasto_unit=spec.elasto_unit, subject_id=row.subject_id,
                )  # fmt: skip
                frames += [replace(f, visit=visit) for f in slices] if visit is not None else slices
            except (contract.ContractError, FrameReadError) as exc:
                rejected.append(_row_rejection(name, str(exc), raw))
            continue
        if is_dicom_file(bmode_path):
            # The contract's order: the row's spacing, then the file's own, then dataset.yaml's.
            spacing = (row.spacing_mm, "manifest") if row.spacing_mm is not None else (None, "")
            try:
                found = _dicom_frames(bmode_path, stem, row.sample_id, spacing, row.frame or 0)
            except FrameReadError as exc:
                rejected.append(_row_rejection(name, str(exc), raw))
                continue
            # The manifest's subject and visit win over the file's PatientID / StudyDate.
            frame = replace(found[0], subject_id=row.subject_id, visit=visit or found[0].visit)
            if frame.spacing_mm is None:
                frame = _with_spacing(frame, *_spec_or_cli(spec.spacing_mm, spacing_mm_cli))
            frames.append(frame)
            continue
        spacing = contract.row_spacing_mm(row, spec)
        if spacing is not None:
            source = "manifest" if row.spacing_mm is not None else "dataset.yaml"
        else:
            spacing, source = _spec_or_cli(None, spacing_mm_cli)
        frames.append(
            FrameInput(
                stem,
                row.sample_id,
                bmode_path,
                elasto_path,
                spacing,
                source,
                spec.elasto_unit,
                subject_id=row.subject_id,
                visit=visit,
            )  # fmt: skip
        )
    return sorted(frames, key=lambda f: f.stem), rejected


def _row_rejection(name: str, reason: str, raw: dict[str, str]) -> Rejection:
    """A manifest row's rejection, with the subject and visit the row names (as written)."""
    return Rejection(name, reason, raw.get("subject_id") or None, raw.get("visit") or None)


def _manifest_visit(raw: dict[str, str]) -> VisitInfo | None:
    """The row's optional ``visit``, ``event``, ``event_date``, ``event_notes`` cells (issue #18); None
    without a visit. ValueError naming the column and its text."""
    cells = {c: raw.get(c) or "" for c in ("visit", "event", "event_date", "event_notes")}
    if not cells["visit"]:
        if cells["event"] or cells["event_date"]:
            filled = "event" if cells["event"] else "event_date"
            raise ValueError(f"column {filled} {cells[filled]!r} is given, but visit is empty")
        return None
    try:
        return visit_info(**cells, source="manifest")
    except ValueError as exc:
        raise ValueError(f"column {exc}") from None


def _spec_or_cli(spec_spacing: float | None, spacing_mm_cli: float | None) -> tuple[float | None, str]:
    if spec_spacing is not None:
        return spec_spacing, "dataset.yaml"
    if spacing_mm_cli is not None:
        return float(spacing_mm_cli), "cli"
    return None, ""


def _with_spacing(frame: FrameInput, spacing_mm: float | None, source: str) -> FrameInput:
    return replace(frame, spacing_mm=spacing_mm, spacing_source=source if spacing_mm is not None else "")


def _walk(folder: Path, rejected: list[Rejection]) -> list[Path]:
    """Every file below ``folder`` (hidden ones skipped), sorted; folder links are not followed (no loops)."""
    found: list[Path] = []

    def on_error(exc: OSError) -> None:
        if Path(exc.filename) == folder:
            raise InputError(f"{folder}: cannot list the input folder ({exc.strerror or exc})")
        rejected.append(Rejection(_relative(Path(exc.filename), folder), f"cannot list ({exc.strerror})"))

    for dirpath, dirnames, filenames in os.walk(folder, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return found


def _relative(path: Path, folder: Path) -> str:
    return path.relative_to(folder).as_posix()


def _discover_folder(
    folder: Path, spacing_mm_cli: float | None, profile: ScannerProfile | None
) -> tuple[list[FrameInput], list[Rejection]]:
    """Frames from every file below ``folder``. Per file, in this order: ``*_bmode.*`` / ``*_elasto.*``
    pairs (same folder, same stem); DICOM (by suffix or by its 'DICM' preamble: exports often carry no
    suffix); with a profile, PNG/JPEG/BMP screenshots; any other image is a B-mode-only frame."""
    rejected: list[Rejection] = []
    paths = _walk(folder, rejected)
    bmodes: dict[str, list[Path]] = {}  # key: relative path of the stem, e.g. "visit1/a"
    elastos: dict[str, list[Path]] = {}
    singles: list[tuple[str, Path, str]] = []  # (relative stem, path, kind)
    volumes: list[Path] = []  # NIfTI / NRRD sweeps
    for path in paths:
        rel = _relative(path, folder)
        if path.is_symlink() and not path.exists():  # is_file() would silently skip it
            if _NAME_RE.match(path.name) or path.suffix.lower() in IMAGE_LIKE_SUFFIXES:
                rejected.append(Rejection(rel, "broken or looping symbolic link"))
            continue
        if not path.is_file() or path.name in NOT_IMAGES:
            continue
        if is_volume_file(path):  # NIfTI / NRRD: a sweep (issue #17)
            volumes.append(path)
            continue
        suffix = path.suffix.lower()
        match = _NAME_RE.match(path.name)
        rel_stem = _relative(path.with_name(match["stem"]), folder) if match else ""
        if match and match["role"] == "bmode" and suffix in BMODE_SUFFIXES:
            bmodes.setdefault(rel_stem, []).append(path)
        elif match and match["role"] == "elasto" and suffix in ELASTO_SUFFIXES:
            elastos.setdefault(rel_stem, []).append(path)
        elif match and match["role"] == "elasto":
            rejected.append(Rejection(rel, f"elastography must be TIFF or .npy in kPa, not {suffix}"))
        elif suffix in DICOM_SUFFIXES or (not suffix and is_dicom_file(path)):
            singles.append((_relative(path.with_suffix(""), folder), path, "dicom"))
        elif profile is not None and suffix in SCREENSHOT_SUFFIXES:
            singles.append((_relative(path.with_suffix(""), folder), path, "screenshot"))
        elif suffix in BMODE_SUFFIXES:
            singles.append((_relative(path.with_suffix(""), folder), path, "image"))
        # Anything else (sidecar .json, notes, spreadsheets) is not an image: ignored.

    for rel_stem, found in elastos.items():
        if rel_stem not in bmodes:
            rejected.extend(
                Rejection(
                    _relative(p, folder), f"elastography without a B-mode image {Path(rel_stem).name}_bmode.*"
                )
                for p in found
            )

    frames: list[FrameInput] = []
    for rel_stem in sorted(bmodes):
        name = _relative(bmodes[rel_stem][0], folder)
        candidates = bmodes[rel_stem] + elastos.get(rel_stem, [])
        if len(bmodes[rel_stem]) > 1 or len(elastos.get(rel_stem, [])) > 1:
            rejected.append(
                Rejection(name, f"ambiguous: several files for {rel_stem!r}: {[p.name for p in candidates]}")
            )
            continue
        try:
            spacing = _sidecar_spacing(folder / f"{rel_stem}.json")
        except InputError as exc:
            rejected.append(Rejection(name, str(exc)))
            continue
        spacing = _or_cli(spacing, spacing_mm_cli)
        elasto = elastos[rel_stem][0] if rel_stem in elastos else None
        frames.append(FrameInput(_stem_of(rel_stem), name, bmodes[rel_stem][0], elasto, *spacing))

    for rel_stem, path, kind in singles:
        name = _relative(path, folder)
        try:
            sidecar = _sidecar_spacing(path.with_suffix(".json"))
        except InputError as exc:
            rejected.append(Rejection(name, str(exc)))
            continue
        if kind == "dicom" and dicom_states_slice_spacing(path):  # a sweep, not a cine loop
            try:
                frames += sweep_frames(path, None, _stem_of(rel_stem), name)
            except FrameReadError as exc:
                rejected.append(Rejection(name, _strip_path(str(exc), path)))
            continue
        if kind == "dicom":
            try:
                frames += _dicom_file_frames(path, _stem_of(rel_stem), name, sidecar, spacing_mm_cli)
            except FrameReadError as exc:
                rejected.append(Rejection(name, _strip_path(str(exc), path)))
            continue
        if kind == "screenshot" and profile is not None:
            own = sidecar if sidecar[0] is not None else (profile.spacing_mm(), "profile")
            spacing = _or_cli(own if own[0] is not None else (None, ""), spacing_mm_cli)
            box = profile.bmode_box
            frames.append(
                FrameInput(
                    _stem_of(rel_stem),
                    name,
                    path,
                    None,
                    *spacing,
                    kind="screenshot",
                    shape=(box[3], box[2]),
                    profile=profile,
                )  # fmt: skip
            )
            continue
        frames.append(FrameInput(_stem_of(rel_stem), name, path, None, *_or_cli(sidecar, spacing_mm_cli)))
    frames += _folder_sweeps(folder, volumes, rejected)
    return _unique_stems(frames, rejected), rejected


def _folder_sweeps(folder: Path, paths: list[Path], rejected: list[Rejection]) -> list[FrameInput]:
    """NIfTI / NRRD files as sweeps: ``<stem>_elasto.*`` pairs with ``<stem>_bmode.*``; ``*_mask.*`` (labels,
    not an image) is skipped; any other volume is a B-mode sweep. Spacing comes from each file."""
    by_name = {_relative(p.with_name(volume_stem(p)), folder): p for p in paths}
    frames: list[FrameInput] = []
    for rel_stem, path in sorted(by_name.items()):
        name = _relative(path, folder)
        if rel_stem.endswith(SWEEP_LABEL_SUFFIXES):
            continue
        elasto = None
        if rel_stem.endswith("_elasto"):
            if rel_stem.removesuffix("_elasto") + "_bmode" not in by_name:
                rejected.append(
                    Rejection(
                        name,
                        f"elastography volume without a B-mode volume {Path(rel_stem).name.removesuffix('_elasto')}_bmode.*",
                    )
                )
            continue
        if rel_stem.endswith("_bmode"):
            elasto = by_name.get(rel_stem.removesuffix("_bmode") + "_elasto")
            rel_stem = rel_stem.removesuffix("_bmode")
        try:
            frames += sweep_frames(path, elasto, _stem_of(rel_stem), name)
        except FrameReadError as exc:
            rejected.append(Rejection(name, _strip_path(str(exc), path)))
    return frames


def _dicom_file_frames(
    path: Path, stem: str, name: str, sidecar: tuple[float | None, str], spacing_mm_cli: float | None
) -> list[FrameInput]:
    """A DICOM file's frames: its own pixel size first, then a sidecar, then --spacing-mm."""
    frames = _dicom_frames(path, stem, name, (None, ""))
    if frames and frames[0].spacing_mm is None:
        spacing = _or_cli(sidecar, spacing_mm_cli)
        frames = [_with_spacing(f, *spacing) for f in frames]
    return frames


def _or_cli(spacing: tuple[float | None, str], spacing_mm_cli: float | None) -> tuple[float | None, str]:
    if spacing[0] is not None:
        return spacing
    if spacing_mm_cli is not None:
        return float(spacing_mm_cli), "cli"
    return None, ""


def _stem_of(rel_stem: str) -> str:
    return rel_stem.replace("/", PATH_SEPARATOR)  # bounded in length by the CLI, like every stem


def _strip_path(message: str, path: Path) -> str:
    return message.removeprefix(f"{path}: ")


def _unique_stems(frames: list[FrameInput], rejected: list[Rejection]) -> list[FrameInput]:
    """Sorted by stem; a second frame whose output name is taken is rejected (never overwrites the first)."""
    seen: dict[str, str] = {}
    kept = []
    for frame in sorted(frames, key=lambda f: (f.stem, f.name)):
        if frame.stem in seen:
            rejected.append(
                Rejection(frame.name, f"its output name {frame.stem!r} is taken by {seen[frame.stem]}")
            )
            continue
        seen[frame.stem] = frame.name
        kept.append(frame)
    return kept


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
