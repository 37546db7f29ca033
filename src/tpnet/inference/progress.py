"""The record of finished frames that lets ``tpnet-infer --resume`` continue an interrupted run.

One JSON line per frame, appended once all of that frame's outputs are written: its CSV rows, its report
section and its trigger-point counts (or why it was rejected). A frame not in the journal is not finished and
is analysed again on resume; the CSV and the report are rebuilt from the journal, so a frame whose rows were
written just before the interruption is never listed twice. The first line holds the run's settings: a resume
with another model, input or settings is refused. A line cut short by a kill is ignored.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PROGRESS_NAME = ".tpnet-infer-progress.jsonl"


class ResumeError(ValueError):
    """The run in the output folder cannot be continued as asked; the message says why and what to do."""


@dataclass(frozen=True)
class FrameRecord:
    stem: str
    name: str
    rows: list[list[str]] = field(default_factory=list)
    section: str = ""
    trp_counts: dict[str, int] = field(default_factory=dict)
    rejected_reason: str | None = None  # set: the frame was rejected while the run analysed it
    notes: list[str] = field(default_factory=list)  # what reading it assumed (bit depth, clipping)
    frame_row: list[str] = field(default_factory=list)  # its frames.csv line (cli.FRAME_COLUMNS)
    warnings: list[dict] = field(default_factory=list)  # its named warnings: {"code", "message"} each
    # The last slice of a sweep carries the sweep's detections_3d.csv rows (and its section in ``section``).
    rows_3d: list[list[str]] = field(default_factory=list)


class ProgressJournal:
    def __init__(self, path: Path, records: list[FrameRecord], handle: IO[str]) -> None:
        self.path = path
        self.records = records
        self._handle = handle

    @classmethod
    def start(cls, output_dir: Path, run_key: Mapping[str, object]) -> ProgressJournal:
        """A new, empty journal for a fresh run (an older one is replaced)."""
        path = output_dir / PROGRESS_NAME
        handle = path.open("w", encoding="utf-8")
        handle.write(json.dumps({"run": dict(run_key)}) + "\n")
        handle.flush()
        return cls(path, [], handle)

    @classmethod
    def resume(cls, output_dir: Path, run_key: Mapping[str, object]) -> ProgressJournal:
        """The journal of the interrupted run in ``output_dir``, opened to append; ResumeError if it was
        made with other settings."""
        path = output_dir / PROGRESS_NAME
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ResumeError(
                f"{path}: cannot read the interrupted run's progress ({exc.strerror})"
            ) from None
        entries, good_bytes = _complete_lines(data)
        if not entries or "run" not in entries[0]:
            raise ResumeError(f"{path}: not a tpnet-infer progress file; use --overwrite to start again")
        _check_same_run(output_dir, entries[0]["run"], run_key)
        records = [_record(e) for e in entries[1:]]
        with path.open("r+b") as raw:  # drop a line cut short by a kill before appending after it
            raw.truncate(good_bytes)
        return cls(path, records, path.open("a", encoding="utf-8"))

    @property
    def finished_stems(self) -> set[str]:
        return {r.stem for r in self.records}

    def add(self, record: FrameRecord) -> None:
        self.records.append(record)
        self._handle.write(json.dumps(record.__dict__) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()

    def remove(self) -> None:
        """The run is complete: its results are final and nothing is left to resume."""
        self._handle.close()
        self.path.unlink(missing_ok=True)


def _complete_lines(data: bytes) -> tuple[list[dict], int]:
    """The entries before the first unreadable line, and how many bytes they take."""
    entries: list[dict] = []
    used = 0
    for line in data.split(b"\n")[:-1]:  # the part after the last newline is unfinished by definition
        try:
            entry = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            break
        if not isinstance(entry, dict):
            break
        entries.append(entry)
        used += len(line) + 1
    return entries, used


def _record(entry: dict) -> FrameRecord:
    try:
        return FrameRecord(**entry)
    except TypeError as exc:
        raise ResumeError(
            f"{PROGRESS_NAME}: unreadable entry ({exc}); use --overwrite to start again"
        ) from None


def _check_same_run(output_dir: Path, before: Mapping[str, object], now: Mapping[str, object]) -> None:
    changed = [k for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if changed:
        details = "; ".join(f"{k}: was {before.get(k)!r}, now {now.get(k)!r}" for k in changed)
        raise ResumeError(
            f"{output_dir}: the interrupted run used other settings ({details}); rerun with the same ones "
            f"or use --overwrite to start again"
        )


def model_identity(model_path: Path) -> dict[str, object]:
    """Enough to tell a replaced model file from the same one without hashing it."""
    stat = os.stat(model_path)
    return {
        "model": str(model_path.resolve()),
        "model_bytes": stat.st_size,
        "model_mtime_ns": stat.st_mtime_ns,
    }
