"""Which subject and visit each input frame belongs to (issue #18, ``tpnet-infer --longitudinal``).

Three sources, strongest first:

1. ``study.csv`` in the input folder (``apply_study_table``): columns ``stem``, ``subject_id``, ``visit`` and,
   optionally, ``event``, ``event_date``, ``event_notes`` (header names in any case; UTF-8, with or without a
   BOM). A row's ``stem`` names a frame as tpnet names it or as its file is named: the output stem
   (``a__b`` for ``a/b.png``; ``x`` for ``x_bmode.png`` + ``x_elasto.tif``), the file's path below the folder
   with or without its suffix (``a/b``, ``a/b.png``), a DICOM cine loop's or a 3-D sweep's stem (all its
   frames), or a dataset's sample_id. It overrides what a manifest or a DICOM file says, for the frames it
   names; frames it does not name keep theirs.
2. A contract dataset's manifest.csv: optional columns ``visit``, ``event``, ``event_date``, ``event_notes``
   beside the row's ``subject_id`` (read in ``tpnet.inference.inputs``).
3. A DICOM file's own PatientID and StudyDate (both needed; a StudyDate that is not a date gives no visit).

``discover_inputs`` applies 2 and 3; the caller applies 1 right after it:
``frames, more_rejected = apply_study_table(input_dir, frames)``. A study.csv line that cannot be applied (it
names no frame found, e.g. a visit whose scan is missing; a visit that is neither a date nor an ordinal; no
subject_id; a second line for the same frames) is returned as a ``Rejection`` naming the line; the frames it
would have named keep what they had.

Visit labels are normalised by ``parse_visit_label``: an ISO date ``2026-01-23`` (also DICOM's ``20260123``)
or an ordinal ``1``, ``2``; ``tpnet.core.longitudinal.visit_order`` puts them in time order.
"""

from __future__ import annotations

import csv
import datetime
import io
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # inputs.py imports this module: its names are imported where used, never at load time
    from tpnet.inference.inputs import FrameInput, Rejection

STUDY_TABLE = "study.csv"
STUDY_REQUIRED_COLUMNS: tuple[str, ...] = ("stem", "subject_id", "visit")
STUDY_OPTIONAL_COLUMNS: tuple[str, ...] = ("event", "event_date", "event_notes")
# DICOM DA: YYYYMMDD, and the ACR-NEMA YYYY.MM.DD the standard still asks readers to accept.
_DATE_FORMS = (
    re.compile(r"^(\d{4})-(\d{2})-(\d{2})$"),
    re.compile(r"^(\d{4})(\d{2})(\d{2})$"),
    re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$"),
)
_ORDINAL = re.compile(r"^(\d+)(?:\.0*)?$")  # "2", "2.0" (a spreadsheet's number), "02"


@dataclass(frozen=True)
class VisitInfo:
    visit: str  # the label as given, normalised: an ISO date "2026-01-23" or an ordinal "1", "2"
    event: str = ""  # e.g. "injection": an event at this visit, after its scan (lower-case)
    event_date: str = ""  # ISO date of the event when it is not the visit's own date ("" = the visit's date)
    event_notes: str = ""  # dose, medication: free text, shown in the report
    source: str = ""  # "study.csv", "manifest" or "dicom"


def parse_visit_label(text: str) -> str:
    """``"2026-01-23"``, ``"20260123"`` (DICOM DA) -> ``"2026-01-23"``; ``"1"``, ``"2.0"`` -> ``"1"``,
    ``"2"``. ValueError naming the text for anything else, impossible dates (2026-02-30) included. Eight
    digits are a date, never an ordinal."""
    label = str(text).strip()
    if not label:
        raise ValueError("empty visit: give an ISO date (YYYY-MM-DD) or an ordinal (1, 2, ...)")
    for form in _DATE_FORMS:
        match = form.match(label)
        if match:
            year, month, day = (int(part) for part in match.groups())
            try:
                return datetime.date(year, month, day).isoformat()
            except ValueError as exc:
                raise ValueError(f"visit {label!r} is not a real date ({exc})") from None
    match = _ORDINAL.match(label)
    if match:
        return str(int(match[1]))
    raise ValueError(
        f"visit {label!r} is neither an ISO date (YYYY-MM-DD, or DICOM's YYYYMMDD) nor an ordinal (1, 2, ...)"
    )


def parse_date(text: str, what: str = "date") -> str:
    """A date as ``parse_visit_label`` reads one, never an ordinal (a DICOM StudyDate "2026" is no visit
    2026); ValueError naming ``what`` and the text."""
    label = str(text).strip()
    try:
        parsed = parse_visit_label(label)
    except ValueError:
        parsed = ""
    if not _DATE_FORMS[0].match(parsed):
        raise ValueError(f"{what} {label!r} is not a date (YYYY-MM-DD)")
    return parsed


def visit_info(visit: str, event: str, event_date: str, event_notes: str, source: str) -> VisitInfo:
    """A VisitInfo from table cells (a study.csv line, a manifest row); ValueError naming the cell."""
    return VisitInfo(
        visit=parse_visit_label(visit),
        event=event.strip().lower(),
        event_date=parse_date(event_date, "event_date") if event_date.strip() else "",
        event_notes=event_notes.strip(),
        source=source,
    )


def apply_study_table(
    input_dir: str | Path, frames: list[FrameInput]
) -> tuple[list[FrameInput], list[Rejection]]:
    """Frames (in their order) with ``subject_id`` and ``visit`` set from ``input_dir/study.csv``, and the
    lines that could not be applied. Without a study.csv: the frames unchanged and no rejection. InputError
    (naming the file) when the table is unreadable or lacks a required column."""
    from tpnet.inference.inputs import Rejection

    path = Path(input_dir) / STUDY_TABLE
    if not path.is_file():
        return list(frames), []
    lines = _read_study_table(path)
    index = _frame_keys(Path(input_dir), frames)
    assigned: dict[int, tuple[str, VisitInfo]] = {}  # frame position -> (subject_id, visit)
    claimed_by: dict[int, int] = {}  # frame position -> study.csv line that set it
    rejected: list[Rejection] = []
    for number, row in lines:
        stem = row["stem"]
        name = f"{STUDY_TABLE} line {number} ({stem})"
        subject_id = row["subject_id"]
        if not stem:
            rejected.append(Rejection(f"{STUDY_TABLE} line {number}", "empty stem: the line names no frame"))
            continue
        if not subject_id:
            rejected.append(Rejection(name, "empty subject_id"))
            continue
        try:
            info = visit_info(
                row["visit"], row.get("event", ""), row.get("event_date", ""), row.get("event_notes", ""),
                STUDY_TABLE,
            )  # fmt: skip
        except ValueError as exc:
            rejected.append(Rejection(name, str(exc), subject_id, row["visit"] or None))
            continue
        matched = sorted({i for key in _row_keys(stem) for i in index.get(key, ())})
        if not matched:
            rejected.append(
                Rejection(
                    name,
                    f"listed for subject {subject_id}, visit {info.visit}, "
                    "but no such frame in the input folder",
                    subject_id,
                    info.visit,
                )
            )
            continue
        earlier = sorted({claimed_by[i] for i in matched if i in claimed_by})
        if earlier:
            lines_named = ", ".join(str(n) for n in earlier)
            rejected.append(
                Rejection(name, f"a second line for the same frame(s): line {lines_named} already gives them")
            )
            continue
        for i in matched:
            claimed_by[i] = number
            assigned[i] = (subject_id, info)
    out = [
        replace(frame, subject_id=assigned[i][0], visit=assigned[i][1]) if i in assigned else frame
        for i, frame in enumerate(frames)
    ]
    return out, rejected


def _read_study_table(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, cells by lower-case column) per data line; blank lines skipped."""
    from tpnet.inference.inputs import InputError

    try:
        text = path.read_bytes().decode("utf-8-sig")  # a spreadsheet's "CSV UTF-8" starts with a BOM
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: unreadable study table ({exc})") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in STUDY_REQUIRED_COLUMNS if c not in header]
        if missing:
            raise InputError(
                f"{path}: missing column(s) {', '.join(missing)} "
                f"(has {', '.join(h for h in header if h) or 'none'}; "
                f"needs {', '.join(STUDY_REQUIRED_COLUMNS)}, optional {', '.join(STUDY_OPTIONAL_COLUMNS)})"
            )
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise InputError(f"{path}: column(s) {', '.join(repeated)} appear more than once")
        wanted = {c: header.index(c) for c in STUDY_REQUIRED_COLUMNS + STUDY_OPTIONAL_COLUMNS if c in header}
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            row = {c: cells[i].strip() if i < len(cells) else "" for c, i in wanted.items()}
            rows.append((reader.line_num, row))
    except csv.Error as exc:  # NUL bytes, a field beyond the csv module's size limit
        raise InputError(f"{path}: not a readable CSV file (line {reader.line_num}: {exc})") from None
    return rows


def _row_keys(stem: str) -> set[str]:
    """A line's stem as written and with '/' as tpnet's stems write it ('a/b' -> 'a__b')."""
    from tpnet.inference.inputs import PATH_SEPARATOR

    posix = stem.replace("\\", "/").strip("/")
    return {stem, posix, posix.replace("/", PATH_SEPARATOR)}


def _frame_keys(input_dir: Path, frames: list[FrameInput]) -> dict[str, list[int]]:
    """Every name a study.csv line may use for a frame -> the frames' positions."""
    index: dict[str, list[int]] = {}
    for i, frame in enumerate(frames):
        keys = {frame.stem, frame.name, frame.loop, frame.sweep}
        try:
            relative = frame.bmode_path.relative_to(input_dir).as_posix()
        except ValueError:  # a dataset's file outside its root cannot be named by path
            relative = None
        if relative is not None:  # a loop's or a sweep's file names all its frames
            keys |= {relative, _without_suffix(relative)}
        for key in keys:
            if key:
                index.setdefault(key, []).append(i)
    return index


def _without_suffix(relative: str) -> str:
    """'a/b.png' -> 'a/b'; 'a/s.nii.gz' -> 'a/s'."""
    path = Path(relative)
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.with_suffix("").as_posix()
