"""Integrity check of a contract dataset (``tpnet-data check``; volume rows: ``check_volume.py``).

Reads every frame once and reports every problem it finds, not only the first, each naming the
sample_id (or the file, for dataset-level problems) and the reason; then summarises the data:
subjects, splits, SWE coverage, labels, TrP counts and stiffness per class.
The trainer calls ``check_or_raise`` and refuses a dataset with errors.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import cv2
import numpy as np

from tpnet.core import io
from tpnet.core.contract import (
    SPLITS,
    VOLUME,
    ContractError,
    DatasetSpec,
    ManifestRow,
    is_trp_class,
    load_spec,
    parse_row,
    read_manifest_raw,
    resolve_path,
)
from tpnet.core.contract_frames import (
    RowBmode,
    fit_to_bmode,
    read_row_bmode,
    read_row_header,
    spacing_by_precedence,
)
from tpnet.core.dicom import DicomHeader
from tpnet.core.encoding import elasto_to_kpa
from tpnet.core.plausibility import (
    spacing_warnings,
    stiffness_problem,
    training_spacing_warning,
)
from tpnet.data.check_content import STIFFNESS_BIN_KPA, fill_statistics, label_counts
from tpnet.data.check_volume import check_volume_row

DEFAULT_WORKERS = 4  # decoding is C code that releases the GIL; a few threads hide file latency
UNASSIGNED = "unassigned: split by subject at train time"


class DatasetCheckError(ContractError):
    """The dataset has errors; the message lists them, one per line."""


@dataclass(frozen=True)
class Problem:
    level: str  # "error" or "warning"
    where: str  # sample_id, or the file for dataset-level problems
    reason: str

    def __str__(self) -> str:
        return f"{self.level.upper()} {self.where}: {self.reason}"


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    root: Path | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass
class _FrameResult:
    """What one manifest row contributes: its problems and, when it has no errors, its statistics."""

    problems: list[Problem] = field(default_factory=list)
    missing_spacing: bool = False  # a non-DICOM row parsed, but neither it nor dataset.yaml gives spacing
    spacing_mm: float | None = None  # the row's pixel size, when it parsed
    has_swe: bool = False
    labelled: bool = False
    class_pixels: np.ndarray | None = None  # (num_classes,) pixel counts
    trp_components: dict[str, int] = field(default_factory=dict)
    stiffness_hist: dict[str, np.ndarray] = field(default_factory=dict)  # class name or "all" -> counts
    file_notes: list[tuple[str, str]] = field(
        default_factory=list
    )  # (bmode cell, what its DICOM header says)


def check_dataset(root: str | Path, workers: int = DEFAULT_WORKERS) -> CheckReport:
    """Check ``root`` against the contract; never raises for bad data, returns every problem found."""
    root = Path(root)
    report = CheckReport(root=root)
    spec = _load_spec(root, report)
    try:
        raw_rows = read_manifest_raw(root)
    except ContractError as exc:
        report.problems.append(_file_problem(root / "manifest.csv", exc))
        return report
    if not raw_rows:
        report.problems.append(Problem("error", str(root / "manifest.csv"), "manifest has no rows"))
        return report

    def check_one(numbered: tuple[int, dict[str, str]]) -> _FrameResult:
        return _check_row(root, numbered[1], numbered[0], spec)

    numbered_rows = list(enumerate(raw_rows, start=2))  # line 1 is the header
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(check_one, numbered_rows))  # map keeps manifest order

    _check_across_rows(raw_rows, results)
    _report_file_notes(raw_rows, results)
    dataset_problems = _check_spacing(root, raw_rows, results) + _check_dataset_level(root, raw_rows)
    for result in results:
        report.problems.extend(result.problems)
    report.problems.extend(dataset_problems)
    report.summary = _summarise(root, spec, raw_rows, results)
    return report


def check_or_raise(root: str | Path, workers: int = DEFAULT_WORKERS) -> CheckReport:
    """For the trainer: the report when there are no errors, else ``DatasetCheckError`` listing them."""
    report = check_dataset(root, workers=workers)
    if report.errors:
        lines = "\n".join(f"  {p}" for p in report.errors)
        raise DatasetCheckError(
            f"{root}: dataset check found {len(report.errors)} error(s); fix them or run "
            f"`tpnet-data check {root}`:\n{lines}"
        )
    return report


def main_check(root: str | Path, stream: TextIO | None = None, workers: int = DEFAULT_WORKERS) -> int:
    """Print one line per problem, then the summary; 0 when there are no errors (warnings allowed).
    ``stream`` defaults to the current ``sys.stdout`` (looked up per call, so redirection works)."""
    stream = stream if stream is not None else sys.stdout
    report = check_dataset(root, workers=workers)
    for problem in report.problems:
        print(problem, file=stream)
    if report.summary:
        print(format_summary(report.summary), file=stream)
    verdict = "OK" if report.ok else "FAILED"
    print(f"{verdict}: {len(report.errors)} error(s), {len(report.warnings)} warning(s)", file=stream)
    return 0 if report.ok else 1


# --- one row ---------------------------------------------------------------------------------------


def _check_row(root: Path, raw: dict[str, str], line: int, spec: DatasetSpec | None) -> _FrameResult:
    sample_id = raw.get("sample_id") or f"manifest line {line}"
    result = _FrameResult()

    def error(reason: str) -> None:
        result.problems.append(Problem("error", sample_id, reason))

    def warning(reason: str) -> None:
        result.problems.append(Problem("warning", sample_id, reason))

    row: ManifestRow | None = None
    try:
        row = parse_row(raw, line)  # field checks: ids, spacing, split value, frame index
    except ContractError as exc:
        error(_strip_prefix(str(exc), sample_id))

    if raw.get("kind") == VOLUME:  # a sweep (contract version 2): three 3-D files checked together
        check_volume_row(root, raw, row, spec, error, warning, result)
        return result

    # Files are checked even when a field is bad, so one run lists everything wrong with the row.
    bmode, header = _check_bmode(root, raw, row, error, warning)
    if header is not None:
        result.file_notes = [(raw["bmode"], note) for note in header.notes]
    if row is not None:
        yaml_mm = spec.spacing_mm if spec is not None else None
        try:
            result.spacing_mm, _ = spacing_by_precedence(row.spacing_mm, header, yaml_mm)
        except io.FrameReadError as exc:
            error(f"bmode {row.bmode}: {_strip_prefix(str(exc), str(header.path if header else ''))}")
        if result.spacing_mm is None and header is not None and spec is not None:
            # A DICOM file is expected to carry its calibration: none anywhere is an error, not a guess.
            error(
                f"bmode {row.bmode}: no pixel size anywhere: the spacing_mm cell is empty, the DICOM file has "
                "no ultrasound region calibration nor PixelSpacing, and dataset.yaml has no spacing_mm"
            )
        else:
            result.missing_spacing = spec is not None and result.spacing_mm is None

    unit = spec.elasto_unit if spec is not None else None
    readers: dict[str, Callable[[Path], np.ndarray]] = {
        "elasto": lambda p: io.read_elasto(p, "kPa"),  # as stored; converted below, after the sign check
        "mask": io.read_mask,
    }
    frames: dict[str, np.ndarray] = {}
    for column, reader in readers.items():
        relative = raw.get(column, "")
        if not relative:
            continue
        try:
            path = resolve_path(root, relative)
            frames[column] = reader(path)
        except ContractError as exc:
            error(f"{column} {exc}")
        except io.FrameReadError as exc:
            error(f"{column} {relative}: {_strip_prefix(str(exc), str(path))}")

    if bmode is not None and bmode.box is not None:
        # A DICOM image region: full-frame-sized maps are cropped like the B-mode, region-sized ones kept.
        for column in list(frames):
            try:
                frames[column] = fit_to_bmode(frames[column], f"{column} {raw[column]}", bmode)
            except ContractError as exc:
                error(str(exc))
                del frames[column]
    shapes = {column: arr.shape[:2] for column, arr in frames.items()}
    if bmode is not None:
        shapes = {"bmode": bmode.grey.shape[:2], **shapes}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{column} {s[0]}x{s[1]}" for column, s in shapes.items())
        error(f"shape mismatch: {listed} (bmode, elasto and mask of one row must have equal H x W)")

    elasto_kpa = frames.get("elasto")  # as stored until converted below
    if elasto_kpa is not None:
        # The rule tpnet-infer and the training loader apply too. Without a readable dataset.yaml the values
        # are judged as kPa: the sign needs no unit, and a stored value past the kPa limit is absurd in m/s too.
        problem = stiffness_problem(elasto_kpa, unit or "kPa")
        if problem is not None:
            error(problem)
            elasto_kpa = None
        elif not np.isfinite(elasto_kpa).any():
            warning("elastography is all NaN (no valid SWE pixel); the row is used as B-mode only")
        elif unit is not None:
            elasto_kpa = elasto_to_kpa(elasto_kpa, unit)

    if bmode is not None and result.spacing_mm is not None:
        # Field of view and pixel size; the distance to the dataset's median spacing is checked across rows.
        for reason in spacing_warnings(result.spacing_mm, shape=bmode.grey.shape):
            warning(reason)

    mask = frames.get("mask")
    counts = None
    if mask is not None and spec is not None:
        counts, problem = label_counts(mask, spec.classes)
        if problem is not None:
            error(problem)

    if any(p.level == "error" for p in result.problems) or spec is None:
        return result  # statistics only from frames that are entirely usable
    fill_statistics(result, spec, mask, counts, elasto_kpa, _components_8)
    return result


def _components_8(binary: np.ndarray) -> int:
    count, _ = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    return count - 1  # minus the background component


def _check_bmode(
    root: Path,
    raw: dict[str, str],
    row: ManifestRow | None,
    error: Callable[[str], None],
    warning: Callable[[str], None],
) -> tuple[RowBmode | None, DicomHeader | None]:
    """Read the row's B-mode as training does (a DICOM row: its header, then only its frame, cropped to the
    image region); every failure is one error naming the file and the reason."""
    relative = raw.get("bmode", "")
    if not relative:
        return None, None
    try:
        path = resolve_path(root, relative)
    except ContractError as exc:
        error(f"bmode {exc}")
        return None, None
    header = None
    try:
        header = read_row_header(path)
        # An unparsed row's frame cell was already reported; the file is still read (frame 0) for its faults.
        frame = row.frame if row is not None else None
        bmode = read_row_bmode(
            path,
            frame,
            header,
            # A guessed bit depth (12-bit data in a 16-bit PNG) is a warning line of this row, not stderr noise.
            on_rescale=lambda note: warning(f"bmode {_strip_prefix(note, str(path))}"),
        )
    except io.FrameReadError as exc:
        error(f"bmode {relative}: {_strip_prefix(str(exc), str(path))}")
        return None, header
    return bmode, header


# --- across rows and dataset level -----------------------------------------------------------------


def _check_across_rows(raw_rows: list[dict[str, str]], results: list[_FrameResult]) -> None:
    """Duplicate sample_ids and subjects in two splits; each problem goes to the offending row."""
    first_line: dict[str, int] = {}
    subject_split: dict[str, tuple[str, str]] = {}  # subject -> (split, sample_id that set it)
    for index, (raw, result) in enumerate(zip(raw_rows, results, strict=True)):
        sample_id, subject, split = raw.get("sample_id", ""), raw.get("subject_id", ""), raw.get("split", "")
        line = index + 2
        if sample_id:
            if sample_id in first_line:
                result.problems.append(
                    Problem(
                        "error",
                        sample_id,
                        f"duplicate sample_id (manifest line {line}; first on line {first_line[sample_id]})",
                    )
                )
            else:
                first_line[sample_id] = line
        if subject and split in SPLITS:
            first_split, first_sample = subject_split.setdefault(subject, (split, sample_id))
            if split != first_split:
                result.problems.append(
                    Problem(
                        "error",
                        sample_id,
                        f"subject {subject!r} is in split {split!r} here but in {first_split!r} "
                        f"for {first_sample}; all frames of a subject must share one split",
                    )
                )


def _report_file_notes(raw_rows: list[dict[str, str]], results: list[_FrameResult]) -> None:
    """A DICOM header's notes (a clipped region, other regions ignored) as warnings, once per file: the first
    row of a cine listed frame by frame says it for all of them."""
    rows_per_note: dict[tuple[str, str], list[int]] = {}
    for index, result in enumerate(results):
        for key in result.file_notes:
            rows_per_note.setdefault(key, []).append(index)
    for (bmode, note), indices in rows_per_note.items():
        first = indices[0]
        more = f" (and {len(indices) - 1} more row(s) of this file)" if len(indices) > 1 else ""
        sample_id = raw_rows[first].get("sample_id") or f"manifest line {first + 2}"
        results[first].problems.append(Problem("warning", sample_id, f"bmode {bmode}: {note}{more}"))


def _check_spacing(root: Path, raw_rows: list[dict[str, str]], results: list[_FrameResult]) -> list[Problem]:
    """No spacing anywhere is one dataset-level warning; a few rows without it are one warning each; a row far
    from the median spacing (training's default target spacing) is one warning each."""
    known = [result.spacing_mm for result in results if result.spacing_mm is not None]
    if known:
        median = float(np.median(known))
        for raw, result in zip(raw_rows, results, strict=True):
            if result.spacing_mm is None:
                continue
            far = training_spacing_warning(result.spacing_mm, median, "the dataset's median")
            if far is not None:
                result.problems.append(Problem("warning", raw["sample_id"], far))
    missing = [result for result in results if result.missing_spacing]
    if missing and len(missing) == len(results):
        reason = (
            "no spacing_mm in the manifest nor in dataset.yaml; training then needs an explicit "
            "target spacing and assumes every frame has it"
        )
        return [Problem("warning", str(root / "manifest.csv"), reason)]
    for raw, result in zip(raw_rows, results, strict=True):
        if result.missing_spacing:
            result.problems.append(
                Problem("warning", raw["sample_id"], "no spacing_mm (empty cell and no dataset.yaml default)")
            )
    return []


def _check_dataset_level(root: Path, raw_rows: list[dict[str, str]]) -> list[Problem]:
    problems = []
    manifest = str(root / "manifest.csv")
    without_split = [r.get("sample_id", "") for r in raw_rows if not r.get("split")]
    if 0 < len(without_split) < len(raw_rows):
        shown = ", ".join(without_split[:5]) + (", ..." if len(without_split) > 5 else "")
        problems.append(
            Problem(
                "error",
                manifest,
                f"split is set on {len(raw_rows) - len(without_split)} of {len(raw_rows)} rows; "
                f"set it on every row or on none (missing on: {shown})",
            )
        )
    subjects = {r.get("subject_id") for r in raw_rows if r.get("subject_id")}
    if len(without_split) == len(raw_rows) and len(subjects) < 3:
        reason = f"only {len(subjects)} subject(s): a subject-level split cannot fill train, val and test"
        problems.append(Problem("warning", manifest, reason))
    return problems


def _load_spec(root: Path, report: CheckReport) -> DatasetSpec | None:
    try:
        return load_spec(root)
    except ContractError as exc:
        report.problems.append(_file_problem(root / "dataset.yaml", exc))
        return None  # frames are still read; checks that need classes or the unit are skipped


def _file_problem(path: Path, exc: Exception) -> Problem:
    return Problem("error", str(path), _strip_prefix(str(exc), str(path)))


def _strip_prefix(message: str, where: str) -> str:
    """Contract and I/O errors start with 'name: '; the report already shows the name."""
    prefix = f"{where}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


# --- summary ---------------------------------------------------------------------------------------


def _summarise(
    root: Path, spec: DatasetSpec | None, raw_rows: list[dict[str, str]], results: list[_FrameResult]
) -> dict:
    classes = spec.classes if spec is not None else ()
    splits = [r.get("split", "") for r in raw_rows]
    if any(splits):
        frames_per_split: dict[str, int] | str = {}
        for split in splits:
            key = split or "unassigned"
            frames_per_split[key] = frames_per_split.get(key, 0) + 1
    else:
        frames_per_split = UNASSIGNED

    class_pixels = np.zeros(len(classes), dtype=np.int64)
    roles = spec.class_roles if spec is not None else None
    trp_counts = {name: 0 for name in classes if is_trp_class(name, roles)}
    hists: dict[str, np.ndarray] = {}
    for result in results:
        if result.class_pixels is not None:
            class_pixels += result.class_pixels
        for name, count in result.trp_components.items():
            trp_counts[name] += count
        for name, counts in result.stiffness_hist.items():
            hists[name] = hists.get(name, 0) + counts
    total_pixels = int(class_pixels.sum())
    with_swe = sum(r.has_swe for r in results)
    return {
        "dataset": spec.name if spec is not None else root.name,
        "root": str(root),
        "frames": len(raw_rows),
        "frames_usable": sum(not any(p.level == "error" for p in r.problems) for r in results),
        "subjects": len({r.get("subject_id") for r in raw_rows if r.get("subject_id")}),
        "frames_per_split": frames_per_split,
        "frames_with_swe": with_swe,
        "frames_without_swe": len(results) - with_swe,
        "frames_labelled": sum(r.labelled for r in results),
        "class_pixel_fraction": {
            name: (float(class_pixels[i]) / total_pixels if total_pixels else 0.0)
            for i, name in enumerate(classes)
        },
        "trp_count": trp_counts,
        "stiffness_kpa": {name: _percentiles(hists[name]) for name in ("all", *classes) if name in hists},
    }


def _percentiles(counts: np.ndarray) -> dict[str, float]:
    """p5/p50/p95 from histogram counts (bin centres, so exact to half a bin: 0.25 kPa)."""
    cumulative = np.cumsum(counts)
    total = int(cumulative[-1])
    out: dict[str, float] = {}
    for q in (5, 50, 95):
        index = int(np.searchsorted(cumulative, q / 100 * total))
        out[f"p{q}"] = round((index + 0.5) * STIFFNESS_BIN_KPA, 2)
    out["pixels"] = total
    return out


def format_summary(summary: dict) -> str:
    lines = [f"Dataset {summary['dataset']} ({summary['root']})"]
    lines.append(
        f"  frames: {summary['frames']} ({summary['frames_usable']} without errors), subjects: {summary['subjects']}"
    )
    splits = summary["frames_per_split"]
    if isinstance(splits, dict):
        splits = ", ".join(f"{name} {count}" for name, count in splits.items())
    lines.append(f"  frames per split: {splits}")
    lines.append(f"  SWE: {summary['frames_with_swe']} frames with, {summary['frames_without_swe']} without")
    lines.append(f"  labelled frames: {summary['frames_labelled']}")
    if summary["frames_labelled"]:
        fractions = ", ".join(f"{n} {f:.4f}" for n, f in summary["class_pixel_fraction"].items())
        lines.append(f"  class pixel fraction: {fractions}")
        lines.append(
            "  TrP count: " + (", ".join(f"{n} {c}" for n, c in summary["trp_count"].items()) or "none")
        )
    for name, stats in summary["stiffness_kpa"].items():
        lines.append(
            f"  stiffness {name}: p5 {stats['p5']:.1f}, p50 {stats['p50']:.1f}, p95 {stats['p95']:.1f} kPa "
            f"({stats['pixels']} px)"
        )
    return "\n".join(lines)
