"""Which output folders ``tpnet-infer`` may write into, and replacing only what it wrote there.

A folder is tpnet's own once it holds ``OUTPUT_MARKER``, written before anything else. ``--overwrite`` and
``--resume`` refuse any non-empty folder without it (a dataset root, a folder of ground-truth masks, someone's
home): nothing in such a folder is ever deleted. In a marked folder only tpnet's own names go: the PNG,
.nii.gz and HTML files in ``masks/``, ``overlays/`` and ``patients/``, the CSV, JSON and HTML it writes, and its
temporary files.
"""

from __future__ import annotations

import json
from pathlib import Path

from tpnet import __version__
from tpnet.core.atomic import atomic_write_text

OUTPUT_MARKER = "tpnet-infer-output.json"
OUTPUT_FILES: tuple[str, ...] = (
    "detections.csv", "frames.csv", "loops.csv", "summary.json", "report.html", "detections_3d.csv",
    "tracks.csv", "changes.csv", "visits.csv",
)  # fmt: skip
# masks/ (PNG label maps, sweeps' .nii.gz), overlays/ (PNG), patients/ (one HTML page per patient, issue #18)
OUTPUT_DIRS: tuple[str, ...] = ("masks", "overlays", "patients")
ALWAYS_MADE_DIRS: tuple[str, ...] = ("masks", "overlays")  # patients/ only by a --longitudinal run
OWN_SUFFIXES: tuple[str, ...] = (".png", ".nii.gz", ".html")  # what tpnet-infer writes into its folders
LOCK_NAME = ".tpnet-infer.lock"
REPORT_SECTIONS_TMP = ".report.html.sections.tmp"
# Left by a run that was killed: the lock (taken over when stale) and the report's streamed sections.
RUN_LEFTOVERS: tuple[str, ...] = (LOCK_NAME, REPORT_SECTIONS_TMP)


class OutputFolderError(ValueError):
    """The output folder cannot be used as asked; the message names it and says what to do."""


def is_tpnet_output(output_dir: Path) -> bool:
    marker = output_dir / OUTPUT_MARKER
    return marker.is_file() and not marker.is_symlink()


def check_output_folder(output_dir: Path, overwrite: bool, resume: bool) -> None:
    """Refuse an output folder that tpnet may not write into, before anything is written or deleted."""
    if output_dir.is_symlink() or (output_dir.exists() and not output_dir.is_dir()):
        raise OutputFolderError(f"{output_dir}: output exists and is not a folder")
    if not output_dir.exists() or not _has_content(output_dir):
        return
    if not overwrite and not resume:
        raise OutputFolderError(
            f"{output_dir}: output folder is not empty; use --overwrite to replace earlier results "
            f"or --resume to finish an interrupted run"
        )
    if not is_tpnet_output(output_dir):
        raise OutputFolderError(
            f"{output_dir}: not a tpnet-infer output folder (no {OUTPUT_MARKER}); --overwrite and --resume "
            f"only replace tpnet-infer's own results, so nothing here was touched: choose a new or empty folder"
        )
    for name in OUTPUT_DIRS:
        sub = output_dir / name
        if sub.is_symlink() or (sub.exists() and not sub.is_dir()):
            raise OutputFolderError(f"{sub}: expected tpnet-infer's own folder here, found a link or a file")


def _has_content(folder: Path) -> bool:
    return any(p.name not in RUN_LEFTOVERS for p in folder.iterdir())


def mark_output_folder(output_dir: Path) -> None:
    """Write the marker (first, before any result): from now on this folder is tpnet's to replace."""
    note = {
        "tool": "tpnet-infer",
        "tpnet_version": __version__,
        "note": "Results written by tpnet-infer. tpnet-infer --overwrite replaces only its own files here.",
    }
    atomic_write_text(output_dir / OUTPUT_MARKER, json.dumps(note, indent=2) + "\n")


def remove_earlier_results(output_dir: Path, keep_results: bool = False) -> None:
    """Delete what an earlier run wrote (its names only; anything else stays) and recreate the folders.
    ``keep_results``: only the temporary files of a killed run go (a resumed run keeps the rest)."""
    for name in OUTPUT_DIRS:
        sub = output_dir / name
        if name in ALWAYS_MADE_DIRS:
            sub.mkdir(exist_ok=True)
        elif not sub.is_dir():
            continue
        for path in sub.iterdir():
            ours = _is_temporary(path) or (not keep_results and path.name.endswith(OWN_SUFFIXES))
            if ours and (path.is_symlink() or path.is_file()):  # never a folder
                path.unlink()
    for name in (REPORT_SECTIONS_TMP,) if keep_results else (*OUTPUT_FILES, REPORT_SECTIONS_TMP):
        path = output_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()


def _is_temporary(path: Path) -> bool:
    """An atomic write's temporary file (``.<name>.<hex>.tmp``), left behind only by a killed run."""
    return path.name.startswith(".") and path.name.endswith(".tmp")
