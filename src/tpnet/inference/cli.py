"""``tpnet-infer``: run an exported model on a folder of frames; write masks, overlays, CSV, JSON and HTML.

Exit codes: 0 every input analysed; 3 some inputs rejected (all others still analysed; with ``--strict`` a
frame with any named warning is rejected too); 2 usage error or unusable model. A bad frame never stops the run.

Every frame is compared with the model's card (``tpnet.core.input_check``): each named warning is printed,
listed per frame in summary.json and frames.csv, and shown in the report.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
from tqdm import tqdm  # tqdm.write: messages that do not break a drawn bar

from tpnet import __version__
from tpnet.core.atomic import atomic_write_text
from tpnet.core.confidence import Calibration
from tpnet.core.contract import trp_class_indices
from tpnet.core.csv_safe import safe_row
from tpnet.core.device import DeviceUnavailableError
from tpnet.core.input_check import usable_reference
from tpnet.core.io import write_png
from tpnet.core.model_file import LoadedModel, ModelFileError, ModelNeedsTorchError, load_model_file
from tpnet.core.needle_path import GuidanceParams
from tpnet.core.postprocess import TriggerPoint
from tpnet.core.run_lock import FolderLockedError, lock_folder, unlock_folder
from tpnet.core.scanner_profile import ProfileError, ScannerProfile, load_profile
from tpnet.core.terminal import progress_bar
from tpnet.inference import fault_injection
from tpnet.inference.inputs import FrameInput, InputError, InputWarning, Rejection, discover_inputs
from tpnet.inference.interrupt import Interrupted, StopRequests, exit_code
from tpnet.inference.loops import DEFAULT_MIN_FRAMES, LOOP_COLUMNS, LoopDetection, summarise_loop
from tpnet.inference.memory import bound_cpu_memory, release_freed_memory
from tpnet.inference.output_folder import (
    LOCK_NAME,
    OUTPUT_DIRS,
    OUTPUT_FILES,
    OUTPUT_MARKER,
    OutputFolderError,
    check_output_folder,
    mark_output_folder,
    remove_earlier_results,
)
from tpnet.inference.output_names import bounded_stem
from tpnet.inference.overlay_writers import OverlayWriters, default_overlay_processes
from tpnet.inference.predictor import FrameFailure, FramePrediction, Predictor, stiffness_note
from tpnet.inference.progress import PROGRESS_NAME, FrameRecord, ProgressJournal, ResumeError, model_identity
from tpnet.inference.report import HtmlReport, frame_section
from tpnet.inference.study import STUDY_TABLE, apply_study_table
from tpnet.inference.sweep_run import DETECTIONS_3D_COLUMNS, DETECTIONS_3D_NAME, SweepAssembler

EXIT_OK, EXIT_USAGE, EXIT_REJECTED = 0, 2, 3
# One row per trigger point, and one per analysed frame without any ("no trigger point found", the other
# columns empty). The first twelve are the columns of older versions, in place: "class" is the reported class
# (active_trp, latent_trp or indeterminate), "confidence" the calibrated P(true trigger point). The needle
# columns (issue #16, ``_needle_cells``) come next, then the maximum stiffness (issue #18).
CSV_COLUMNS: tuple[str, ...] = (
    "stem", "t_s", "trp_id", "class", "x_px", "y_px", "x_mm", "y_mm", "area_mm2",
    "stiffness_kpa_mean", "confidence", "nearest_vessel_mm",
    "raw_confidence", "p_active", "confidence_sd", "centroid_sd_mm", "stiffness_kpa_median",
    "stiffness_kpa_sd", "swe_coverage", "stiffness_note", "depth_from_skin_mm", "finding",
    "nearest_nerve_mm", "nearest_critical_mm", "needle_side", "needle_angle_deg", "needle_depth_mm",
    "needle_clearance_mm", "path_safe", "needle_entry_x_px", "needle_entry_y_px", "stiffness_kpa_max",
)  # fmt: skip
NO_FINDING = "no trigger point found"
NO_OVERLAYS_NOTE = (
    "overlays were not drawn (--no-overlays): overlays/ stays empty and the report lists each frame's findings "
    "without its picture; masks/, the CSVs and summary.json are complete"
)
PRINTED_PER_CODE = (
    5  # console lines per warning code; a long run's others are counted (summary.json lists all)
)
FINDINGS = {
    "active_trp": "active trigger point",
    "latent_trp": "latent trigger point",
    "indeterminate": "trigger point (active or latent: indeterminate)",
}
# One row per frame found, analysed or not: where it came from and the pixel size its millimetres rest on;
# warnings: its named warning codes, ";"-separated.
FRAME_COLUMNS: tuple[str, ...] = (
    "stem", "name", "kind", "frame", "t_s", "width_px", "height_px", "spacing_mm", "spacing_source",
    "trp_count", "status", "subject_id", "p_trp_frame", "warnings",
)  # fmt: skip
__all__ = [
    "CSV_COLUMNS",
    "FRAME_COLUMNS",
    "LOCK_NAME",
    "OUTPUT_DIRS",
    "OUTPUT_FILES",
    "OUTPUT_MARKER",
    "main",
]


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpnet-infer",
        description="Detect myofascial trigger points in ultrasound frames with an exported tpnet model.",
        epilog="Input: a dataset root (manifest.csv + dataset.yaml) or a folder, nested folders included, of "
        "DICOM files (stills and cine loops; pixel size from the file), scanner screenshots (PNG/JPEG/BMP, "
        "with --profile), plain B-mode images (PNG/TIFF/.npy/JPEG/BMP) and <name>_bmode.* + "
        '<name>_elasto.<tif|tiff|npy> (kPa) pairs; <name>.json ({"spacing_mm": S}) gives a pixel size. '
        "Exit codes: 0 all analysed, 3 some inputs rejected, 2 usage error or unusable model.",
    )
    parser.add_argument(
        "--model",
        required=True,
        type=Path,
        help="exported model file: .onnx (runs with onnxruntime, no PyTorch needed), .pt or .pt2 (need the "
        'torch extra: pip install "tpnet[torch]")',
    )
    parser.add_argument("--input", required=True, type=Path, help="folder of frames or dataset root")
    parser.add_argument("--output", required=True, type=Path, help="new or empty folder for the results")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        help="default: .pt/.pt2 cuda if torch sees a GPU, else cpu; .onnx cpu (cuda: onnxruntime's CUDA "
        "provider, from the onnxruntime-gpu package)",
    )
    parser.add_argument(
        "--batch-size", type=_positive_int, default=4, help="frames per network call (default 4)"
    )
    parser.add_argument(
        "--spacing-mm", type=_positive_float, help="pixel size in mm for frames without their own"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="scanner profile (YAML): where the B-mode and elastography views and the colour bar are on a "
        "screenshot; PNG/JPEG/BMP files not named *_bmode/*_elasto are then read as screenshots",
    )
    parser.add_argument(
        "--min-frames",
        type=_positive_int,
        default=DEFAULT_MIN_FRAMES,
        help=f"cine loops: a trigger point seen at the same place in this many consecutive frames is "
        f"stable (default {DEFAULT_MIN_FRAMES})",
    )
    parser.add_argument(
        "--no-tta",
        action="store_true",
        help="one network pass instead of two (the frame and its left-right mirror image, the default): about "
        "twice as fast, but no uncertainty (confidence_sd, centroid_sd_mm) and a calibration fitted on two passes",
    )
    parser.add_argument(
        "--tta", action="store_true", help="accepted for older command lines: two passes are now the default"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="reject every frame with a named warning (missing elastography, pixel size assumed, image "
        "statistics unlike the training frames, implausible pixel size or field of view) instead of analysing "
        "it with the warning; exit code 3",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace earlier results (masks/, overlays/, csv, json, html) in OUTPUT; only in a folder "
        f"tpnet-infer wrote (it holds {OUTPUT_MARKER}), nothing else there is deleted",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in OUTPUT (same model, input and settings): frames already "
        "finished are kept, the others analysed",
    )
    parser.add_argument(
        "--min-clearance-mm",
        type=_positive_float,
        metavar="MM",
        help="a needle path is called safe when it passes no closer than this to a nerve or a vessel (default: "
        f"the model file's guidance setting, else {GuidanceParams().min_clearance_mm:g} mm)",
    )
    parser.add_argument(
        "--no-overlays",
        action="store_true",
        help="do not draw overlays/ (drawing and writing them is most of the work per frame besides the network): "
        "masks/, the CSVs, summary.json and the report (its findings without the pictures) are still written",
    )
    parser.add_argument(
        "--longitudinal",
        action="store_true",
        help="follow each patient's trigger points across visits (subject and visit from study.csv in the input "
        "folder, the manifest's subject_id + visit columns, or DICOM PatientID + StudyDate): tracks.csv, "
        "changes.csv, visits.csv and a report page per patient in patients/",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="threads reading frames and writing results while the network runs (default 2; more on a GPU)",
    )
    parser.add_argument(
        "--overlay-processes",
        type=_non_negative_int,
        default=default_overlay_processes(),
        metavar="N",
        help="processes drawing and writing overlays, beside the threads (default: 0 up to 4 cores, then half "
        f"the cores beyond 4, at most 8; here {default_overlay_processes()}); 0 = in the worker threads",
    )
    return parser


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def _check_paths(input_dir: Path, output_dir: Path, overwrite: bool, resume: bool) -> tuple[Path, Path]:
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    if not input_dir.is_dir():
        raise UsageError(f"{input_dir}: input folder not found")
    if output_dir == input_dir or output_dir.is_relative_to(input_dir):
        raise UsageError(f"{output_dir}: output folder must not be the input folder or inside it")
    if input_dir.is_relative_to(output_dir):
        raise UsageError(f"{output_dir}: output folder must not contain the input folder")
    if overwrite and resume:
        raise UsageError("--overwrite starts again and --resume continues: give one of them")
    try:
        check_output_folder(output_dir, overwrite, resume)
    except OutputFolderError as exc:
        raise UsageError(str(exc)) from None
    return input_dir, output_dir


def _open_progress(output_dir: Path, run_key: dict[str, object], resume: bool) -> ProgressJournal:
    """Continue the interrupted run's journal, or start afresh: mark the folder as tpnet's (first, before
    anything is written or deleted), then remove only what an earlier run wrote, so stale masks never mix
    with new ones."""
    if resume and (output_dir / PROGRESS_NAME).is_file():
        journal = ProgressJournal.resume(output_dir, run_key)
        remove_earlier_results(output_dir, keep_results=True)
        return journal
    mark_output_folder(output_dir)
    remove_earlier_results(output_dir)
    return ProgressJournal.start(output_dir, run_key)


def _run_key(input_dir: Path, args: argparse.Namespace) -> dict[str, object]:
    """What a resumed run must share with the interrupted one for the results to be one run's."""
    return {
        "tpnet_version": __version__,
        "input": str(input_dir),
        **model_identity(Path(args.model)),
        "tta": args.tta,
        "spacing_mm": args.spacing_mm,
        "strict": args.strict,
        "profile": _file_identity(args.profile) if args.profile else None,
        "min_frames": args.min_frames,
        "overlays": not args.no_overlays,  # a resumed run must not leave half its frames without a picture
        "min_clearance_mm": args.min_clearance_mm,  # one safety margin for all the run's paths
        # Who and which visit each frame is: --longitudinal reads DICOM PatientID + StudyDate, and study.csv
        # assigns subjects and visits, so a resume with either changed would track two runs' groupings as one.
        "longitudinal": args.longitudinal,
        "study_table": _file_identity(study) if (study := input_dir / STUDY_TABLE).is_file() else None,
    }


def _file_identity(path: Path) -> dict[str, object]:
    """A profile's path and content: a resume with an edited profile would mix two readings of the screen."""
    data = Path(path).read_bytes()
    return {"path": str(Path(path).resolve()), "sha256": hashlib.sha256(data).hexdigest()}


def _finished_run_exit_code(output_dir: Path) -> int | None:
    """--resume on a run that completed: its exit code (nothing to do); None when there is none."""
    if (output_dir / PROGRESS_NAME).exists():
        return None
    try:
        summary = json.loads((output_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict) or summary.get("complete") is not True:
        return None
    return EXIT_REJECTED if summary.get("rejected") else EXIT_OK


def _fmt(value: float, digits: int) -> str:
    return "" if not math.isfinite(value) else f"{value:.{digits}f}"


def _model_warnings(model: LoadedModel, tta: bool) -> list[str]:
    """What the run must say once about the model: a statistic test it cannot make, a TTA setting other
    than the one its calibration was fitted with."""
    found = []
    card = model.meta.get("model_card")
    if not usable_reference(card.get("input_reference") if isinstance(card, dict) else None):
        found.append(
            "the model file carries no training-input reference (model_card.input_reference; older "
            "models): frames are not tested for image statistics unlike the training frames"
        )
    if isinstance(model.meta.get("calibration"), dict):
        fitted_tta = bool(Calibration.from_meta(model.meta).tta)
        if fitted_tta != tta:
            fitted, now, fix = (
                ("with", "without", "leave out --no-tta")
                if fitted_tta
                else ("without", "with", "add --no-tta")
            )
            found.append(
                f"the model's calibration was fitted {fitted} test-time augmentation (the flip pass) but this "
                f"run is {now} it: confidences may be less well calibrated ({fix} to match)"
            )
    return found


def _csv_row(frame: FrameInput, p: TriggerPoint) -> list[str]:
    """A trigger point's row. Without a known pixel size the millimetre columns stay empty: a figure from an
    assumed spacing would read as a measurement."""
    known = frame.spacing_mm is not None
    mm = (lambda v, d: _fmt(v, d)) if known else (lambda v, d: "")  # noqa: E731
    reported = p.reported_class or p.class_name
    return [
        frame.stem, _opt(frame.t_s, 4), str(p.trp_id), reported, _fmt(p.x_px, 2), _fmt(p.y_px, 2),
        mm(p.x_mm, 3), mm(p.y_mm, 3), mm(p.area_mm2, 3), _fmt(p.stiffness_kpa_mean, 2), _fmt(p.confidence, 4),
        mm(p.nearest_vessel_mm, 3),
        _fmt(p.raw_confidence, 4), _fmt(p.p_active, 4), _fmt(p.confidence_sd, 4), mm(p.centroid_sd_mm, 3),
        _fmt(p.stiffness_kpa_median, 2), _fmt(p.stiffness_kpa_sd, 2), _fmt(p.swe_coverage, 3), stiffness_note(p),
        mm(p.depth_from_skin_mm, 3), FINDINGS.get(reported, reported.replace("_", " ")),
        mm(p.nearest_nerve_mm, 3), mm(p.nearest_critical_mm, 3), *_needle_cells(p, known),
        _fmt(p.stiffness_kpa_max, 2),
    ]  # fmt: skip


def _needle_cells(p: TriggerPoint, known: bool) -> list[str]:
    """needle_side .. needle_entry_y_px. No in-plane path: side empty, path_safe "no". A clearance of "inf": no
    nerve or vessel in view. Without a known pixel size the mm figures stay empty, and so does path_safe: the
    margin is in mm, and a call made on an assumed pixel size would read as a measurement."""
    clearance = p.needle_clearance_mm
    depth = _fmt(p.needle_depth_mm, 3) if known else ""
    clearance_cell = "" if not known else "inf" if clearance == math.inf else _fmt(clearance, 3)
    no_path = p.needle_side == ""
    safe = "no" if no_path else ("" if not known else "yes" if p.path_safe else "no")
    return [
        p.needle_side, _fmt(p.needle_angle_deg, 1), depth, clearance_cell, safe,
        _fmt(p.entry_x_px, 2), _fmt(p.entry_y_px, 2),
    ]  # fmt: skip


def _guidance(model: LoadedModel, args: argparse.Namespace) -> GuidanceParams:
    """The model file's guidance settings (defaults for older files), with --min-clearance-mm over them."""
    guidance = model.guidance
    if args.min_clearance_mm is not None:
        guidance = dataclasses.replace(guidance, min_clearance_mm=args.min_clearance_mm)
    return guidance


def _no_finding_row(frame: FrameInput) -> list[str]:
    """An analysed frame without trigger points: listed, so "nothing found" is not mistaken for "not read"."""
    row = [""] * len(CSV_COLUMNS)
    row[CSV_COLUMNS.index("stem")], row[CSV_COLUMNS.index("t_s")] = frame.stem, _opt(frame.t_s, 4)
    row[CSV_COLUMNS.index("finding")] = NO_FINDING
    return row


def _opt(value: float | None, digits: int) -> str:
    return "" if value is None else _fmt(value, digits)


def _frame_row(
    frame: FrameInput,
    shape: tuple[int, ...] | None,
    trp_count: int | None,
    status: str,
    p_trp_frame: float | None = None,
    warning_codes: tuple[str, ...] = (),
) -> list[str]:
    return [
        frame.stem, frame.name, frame.kind, "" if frame.frame_index is None else str(frame.frame_index),
        _opt(frame.t_s, 4), "" if shape is None else str(shape[1]), "" if shape is None else str(shape[0]),
        _opt(frame.spacing_mm, 5), frame.spacing_source or "unknown", "" if trp_count is None else str(trp_count),
        status, frame.subject_id or "", _opt(p_trp_frame, 4), ";".join(warning_codes),
    ]  # fmt: skip


def _error(message: str) -> int:
    print(f"tpnet-infer: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    stops = StopRequests()
    with stops.installed():
        try:
            return _main(argv, stops)
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM outside the frame loop: nothing half-written
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            print(f"tpnet-infer: interrupted ({signal.Signals(signum).name})", file=sys.stderr)
            return exit_code(signum)


def _main(argv: list[str] | None, stops: StopRequests) -> int:
    started = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    if args.tta and args.no_tta:
        return _error("--tta and --no-tta contradict each other: give one of them (TTA is the default)")
    args.tta = not args.no_tta
    # Damaged PNGs are reported per frame; OpenCV's own C++ warnings would only add noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        input_dir, output_dir = _check_paths(args.input, args.output, args.overwrite, args.resume)
    except UsageError as exc:
        return _error(str(exc))
    except RuntimeError as exc:  # pathlib's report of a symlink loop; it names the path
        return _error(f"unusable --input or --output: {exc}")
    except OSError as exc:  # e.g. a name too long for the file system
        return _error(f"unusable --input or --output: {exc.filename}: {exc.strerror or exc}")
    if args.resume and (code := _finished_run_exit_code(output_dir)) is not None:
        print(f"{output_dir}: that run is complete; nothing to resume")
        return code
    bound_cpu_memory()  # before the model's first tensor: peak memory must not grow with the frame count
    try:
        model = load_model_file(args.model, args.device or "auto")
    except ModelNeedsTorchError as exc:  # the one line says which extra, or the ONNX export instead
        print(f"tpnet-infer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DeviceUnavailableError as exc:
        return _error(f"--device {args.device}: {exc} (--device cpu)")
    except ModelFileError as exc:
        return _error(f"unusable model: {exc}")
    device = model.device
    profile: ScannerProfile | None = None
    if args.profile is not None:
        try:
            profile = load_profile(args.profile)
        except ProfileError as exc:
            return _error(f"unusable --profile: {exc}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InputWarning)
            frames, rejected = discover_inputs(
                input_dir, args.spacing_mm, model.spacing_mm, strict=args.strict, profile=profile,
                patient_ids=args.longitudinal,
            )  # fmt: skip
        frames, listed_missing = apply_study_table(input_dir, frames)  # study.csv: subjects and visits
    except InputError as exc:
        return _error(str(exc))
    rejected += listed_missing
    if args.longitudinal and not any(f.subject_id and f.visit is not None for f in frames):
        return _error(
            f"--longitudinal: no frame in {input_dir} has a subject and a visit (give a study.csv with columns "
            "stem, subject_id, visit; a manifest with subject_id and visit columns; or DICOM files with "
            "PatientID and StudyDate)"
        )
    run_warnings = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    run_warnings += _model_warnings(model, args.tta)
    if args.no_overlays:
        run_warnings.append(NO_OVERLAYS_NOTE)
    if not frames and not rejected:
        return _error(
            f"{input_dir}: no frames found (expected DICOM files, images (PNG/TIFF/.npy/JPEG/BMP), "
            "screenshots with --profile, or a dataset root)"
        )

    frames = [dataclasses.replace(f, stem=bounded_stem(f.stem)) for f in frames]  # names the disk accepts

    try:
        # One tpnet-infer per output folder: a second run would delete or mix the first one's files.
        lock = lock_folder(output_dir, LOCK_NAME, "tpnet-infer", "wait for it or choose another --output")
    except FolderLockedError as exc:
        return _error(str(exc))
    try:
        try:
            journal = _open_progress(output_dir, _run_key(input_dir, args), args.resume)
        except (ResumeError, OSError) as exc:
            return _error(str(exc))
        return _analyse(
            model,
            frames,
            rejected,
            run_warnings,
            input_dir,
            output_dir,
            device,
            args,
            started,
            journal,
            stops,
        )
    finally:
        unlock_folder(lock)


def _analyse(
    model: LoadedModel,
    frames: list[FrameInput],
    rejected: list[Rejection],
    run_warnings: list[str],
    input_dir: Path,
    output_dir: Path,
    device: str,
    args: argparse.Namespace,
    started: float,
    journal: ProgressJournal,
    stops: StopRequests,
) -> int:
    """Analyse every frame not finished yet and write all outputs; the exit code."""
    for message in run_warnings:
        print(f"WARNING: {message}", file=sys.stderr)
    for r in rejected:
        print(f"REJECTED {r.name}: {r.reason}")
    if journal.records:
        print(f"resuming: {len(journal.records)} of {len(frames)} frame(s) already finished")
    frames_found = len(frames) + len(rejected)
    rejected.extend(Rejection(r.name, r.rejected_reason) for r in journal.records if r.rejected_reason)
    stats = RunStats(trp_counts={model.classes[i]: 0 for i in trp_class_indices(model.classes, model.roles)})
    for record in journal.records:
        stats.add(record)
    report = HtmlReport(output_dir / "report.html")
    loop_summaries: list[dict] = []
    subject_summaries: list[dict] = []
    longitudinal: dict | None = None  # --longitudinal: the study's subjects, their status and problems

    def all_warnings() -> list[str]:  # the run's, then each analysed frame's (journal order)
        # Each distinct note once: every frame of a cine loop saying the same thing is one warning.
        notes = run_warnings + [note for record in journal.records for note in record.notes]
        return list(dict.fromkeys(notes))

    def summary(complete: bool) -> dict:
        counts = {
            "frames_found": frames_found,
            "frames_processed": stats.processed,
            "frames_rejected": len(rejected),
        }
        data = {
            "tool": "tpnet-infer",
            "tpnet_version": __version__,
            "complete": complete,
            "created": datetime.now().astimezone().isoformat(timespec="seconds"),
            "input": str(input_dir),
            "output": str(output_dir),
            "settings": {
                "device": device,
                "batch_size": args.batch_size,
                "tta": args.tta,
                "spacing_mm": args.spacing_mm,
                "strict": args.strict,
                "profile": str(Path(args.profile).resolve()) if args.profile else None,
                "min_frames": args.min_frames,
                "overlays": not args.no_overlays,
                "guidance": _guidance(model, args).to_dict(),
            },
            "counts": counts,
            "trp_by_class": stats.trp_counts,
            "timing": {
                "total_s": round(time.perf_counter() - started, 3),  # model loading included
                "frames_per_s": round(stats.new / stats.elapsed_s, 3) if stats.elapsed_s > 0 else None,
            },
            "model": {"file": str(Path(args.model).resolve()), "kind": model.kind, "meta": model.meta},
            "model_card": _model_card_summary(model.meta),
            "rejected": [{"name": r.name, "reason": r.reason} for r in rejected],
            "warnings": all_warnings(),
            # Per analysed frame with any: its named warnings ({"code", "message"}), and how often each code came.
            "frame_warnings": [
                {"stem": r.stem, "name": r.name, "warnings": r.warnings}
                for r in journal.records
                if r.rejected_reason is None and r.warnings
            ],
            "warning_counts": _warning_counts(journal.records),
            "frames_without_spacing": sum(
                1
                for r in journal.records
                if r.rejected_reason is None
                and r.frame_row
                and r.frame_row[FRAME_COLUMNS.index("spacing_mm")] == ""
            ),
        }
        if complete:
            data["loops"] = loop_summaries
            data["subjects"] = subject_summaries
            if longitudinal is not None:
                data["longitudinal"] = longitudinal
        if not complete:  # what was done, what is left, and how to continue
            data["interrupted_by"] = signal.Signals(stats.stopped_by).name if stats.stopped_by else None
            data["frames_finished"] = len(journal.records)
            data["frames_remaining"] = len(frames) - len(journal.records)
            data["resume_with"] = "the same tpnet-infer command with --resume"
        return data

    try:
        _write_json(output_dir / "summary.json", summary(complete=False))  # stays so if the run is killed
        _run(model, frames, rejected, input_dir, output_dir, report, journal, stats, device, args, stops)
    except Interrupted as exc:  # a second signal: stop now; the journal holds every finished frame
        stats.stopped_by = exc.signum
    except BaseException:
        report.abort()
        journal.close()
        raise
    if stats.stopped_by is not None:
        report.abort()
        journal.close()
        _write_json(output_dir / "summary.json", summary(complete=False))
        print(
            f"tpnet-infer: interrupted ({signal.Signals(stats.stopped_by).name}): {len(journal.records)} of "
            f"{len(frames)} frame(s) finished, results in {output_dir} are incomplete; "
            f"run the same command with --resume to finish them",
            file=sys.stderr,
        )
        return exit_code(stats.stopped_by)
    loop_summaries, frame_summaries = _write_tables(output_dir, frames, journal, model, args.min_frames)
    frame_summaries = _one_row_per_sweep(frame_summaries, frames, journal)
    subject_summaries = _subject_summaries(frame_summaries)
    if args.longitudinal:
        longitudinal = _track_visits(model, frames, rejected, journal, output_dir)
    _write_json(output_dir / "summary.json", summary(complete=True))
    report.finish(
        model_name=str(model.meta["model_name"]),
        model_file=Path(args.model).name,
        input_name=input_dir.name,
        created=datetime.now().strftime("%Y-%m-%d %H:%M"),
        counts=summary(complete=True)["counts"],
        trp_counts=stats.trp_counts,
        classes=model.classes,
        rejected=rejected,
        warnings=all_warnings(),
        model_meta=model.meta,
        frame_summaries=frame_summaries,
        patients=longitudinal["subjects"] if longitudinal else (),
    )
    journal.remove()  # complete: nothing left to resume
    print(
        f"{stats.processed} frame(s) analysed, {len(rejected)} rejected, "
        f"{sum(stats.trp_counts.values())} trigger point(s) found; results in {output_dir}"
    )
    return EXIT_REJECTED if rejected else EXIT_OK


def _track_visits(
    model: LoadedModel,
    frames: list[FrameInput],
    rejected: list[Rejection],
    journal: ProgressJournal,
    output_dir: Path,
) -> dict:
    """--longitudinal, once every frame is analysed: tracks.csv, changes.csv, visits.csv and patients/ pages;
    the study's summary. Each subject that cannot be tracked is named with its reason on the console."""
    from tpnet.inference import longitudinal_run  # the tracking stage: only for --longitudinal runs

    trp_labels = trp_class_indices(model.classes, model.roles)
    study = longitudinal_run.track_study(
        frames, journal.records, rejected, CSV_COLUMNS,
        on_subject=lambda subject: longitudinal_run.write_patient_page(output_dir, subject, trp_labels),
    )  # fmt: skip
    longitudinal_run.write_tables(output_dir, study)
    for subject in study.subjects:
        for problem in subject.all_problems():
            print(f"LONGITUDINAL {subject.subject_id}: {problem}", file=sys.stderr)
    tracked = sum(s.status == "tracked" for s in study.subjects)
    print(
        f"longitudinal: {tracked} of {len(study.subjects)} patient(s) tracked across visits; "
        f"tracks.csv, changes.csv, visits.csv and {longitudinal_run.PATIENTS_DIR}/ in {output_dir}"
    )
    return study.summary()


def _model_card_summary(meta: dict) -> dict | None:
    """The model card as summary.json shows it: what the model was trained and validated on (the bulky
    input reference is summarised as whether the statistic test ran)."""
    card = meta.get("model_card")
    if not isinstance(card, dict):
        return None
    summary = {k: v for k, v in card.items() if k != "input_reference"}
    summary["input_statistic_test"] = usable_reference(card.get("input_reference"))
    return summary


def _warning_counts(records: list[FrameRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        if record.rejected_reason is None:
            for warning in record.warnings:
                counts[warning["code"]] = counts.get(warning["code"], 0) + 1
    return counts


@dataclass
class RunStats:
    trp_counts: dict[str, int]
    processed: int = 0  # frames analysed, in this run and the interrupted one it continues
    new: int = 0  # ... in this run
    elapsed_s: float = 0.0
    stopped_by: int | None = None  # the signal that stopped the run early

    def add(self, record: FrameRecord) -> None:
        if record.rejected_reason is None:
            self.processed += 1
            for name, n in record.trp_counts.items():
                self.trp_counts[name] = self.trp_counts.get(name, 0) + n


def _run(
    model: LoadedModel,
    frames: list[FrameInput],
    rejected: list[Rejection],
    input_dir: Path,
    output_dir: Path,
    report: HtmlReport,
    journal: ProgressJournal,
    stats: RunStats,
    device: str,
    args: argparse.Namespace,
    stops: StopRequests,
) -> None:
    """Predict and write every frame not in the journal as it arrives, then record it there; failures are
    appended to ``rejected``. A first SIGINT / SIGTERM stops after the frame in hand."""
    guidance = _guidance(model, args)
    predictor = Predictor(
        model, device=device, batch_size=args.batch_size, tta=args.tta, strict=args.strict, guidance=guidance
    )
    finished = journal.finished_stems
    todo = [f for f in frames if f.stem not in finished]
    write_failures: dict[str, str] = {}  # stem -> why its images could not be written
    printed: set[str] = set()  # notes already shown: a loop's frames often share one
    printed_codes: dict[str, int] = {}  # frames whose warning of each code was printed
    started = time.perf_counter()
    sweeps = SweepAssembler(
        output_dir, model.classes, model.roles, Calibration.from_meta(model.meta),
        min_volume_mm3=predictor.params.min_volume_mm3, pictures=not args.no_overlays,
    )  # fmt: skip
    pending: list[FrameRecord] = []  # the slices of the sweep in hand: journalled once the sweep is written
    with (
        contextlib.ExitStack() as stack,
        (output_dir / "detections.csv").open("w", newline="", encoding="utf-8") as csv_file,
    ):
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)
        sweep_csv = stack.enter_context(_Lazy3dCsv(output_dir / DETECTIONS_3D_NAME))
        for record in journal.records:  # an interrupted run's frames, from its journal: each exactly once
            report.add_section(record.section)
            writer.writerows(safe_row(row) for row in record.rows)
            sweep_csv.write(record.rows_3d)
        csv_file.flush()
        stack.callback(sweeps.abort)  # a sweep cut short (stop, crash) leaves no partial mask volume

        def write_images(result: FramePrediction) -> None:  # runs in the predictor's worker threads
            stem = result.frame.stem
            if result.frame.kind == "sweep":
                return  # a sweep's mask volume and pictures are written by the SweepAssembler, in order
            try:
                write_png(output_dir / "masks" / f"{stem}.png", result.label_map)
                if args.no_overlays:
                    return
                elasto = result.elasto_kpa
                overlay_writers.write(
                    output_dir / "overlays" / f"{stem}.png",
                    bmode=result.bmode, label_map=result.label_map, classes=list(model.classes),
                    trigger_points=list(result.trigger_points), elasto_kpa=elasto,
                    spacing_mm=result.frame.spacing_mm, skin_row=result.skin_row, title=result.frame.name,
                    swe_layer=elasto is not None and bool(np.isfinite(elasto).any()),
                    needle_min_clearance_mm=guidance.min_clearance_mm, roles=model.roles,
                )  # fmt: skip
            except Exception as exc:  # a full disk, a name the file system refuses: this frame only
                write_failures[stem] = f"cannot write its results ({exc})"
                for name in OUTPUT_DIRS:  # no mask without its overlay
                    with contextlib.suppress(OSError):
                        (output_dir / name / f"{stem}.png").unlink(missing_ok=True)

        overlay_writers = OverlayWriters(0 if args.no_overlays else args.overlay_processes)
        stack.enter_context(overlay_writers)
        results = predictor.run(todo, workers=args.workers, finish=write_images)
        progress = progress_bar(
            results, total=len(todo), unit="frame", desc="tpnet-infer", dynamic_ncols=True
        )
        try:
            with stops.between_frames():
                for result in progress:
                    fault_injection.slow_frame()
                    record = _record_frame(result, input_dir, write_failures, overlays=not args.no_overlays)
                    if result.frame.kind == "sweep":
                        record = _sweep_slice(record, result, sweeps, sweep_csv, report)
                        if record.rejected_reason is not None:
                            rejected.append(Rejection(record.name, record.rejected_reason))
                            tqdm.write(f"REJECTED {record.name}: {record.rejected_reason}")
                        if record.rejected_reason is None:
                            stats.new += 1  # frames/s counts a sweep's slices as frames
                        stats.add(record)
                        pending.append(record)
                        if record.rows_3d or record.section:  # the sweep is written: its slices are done
                            for done in pending:
                                journal.add(done)
                            pending.clear()
                            release_freed_memory()
                        if stops.requested:
                            stats.stopped_by = stops.signum
                            break
                        continue
                    for note in record.notes:
                        if note not in printed:
                            printed.add(note)
                            tqdm.write(f"WARNING: {note}", file=sys.stderr)
                    for line in _warning_lines(record, printed_codes):
                        tqdm.write(line, file=sys.stderr)
                    if record.rejected_reason is not None:
                        rejected.append(Rejection(record.name, record.rejected_reason))
                        tqdm.write(f"REJECTED {record.name}: {record.rejected_reason}")
                    else:
                        writer.writerows(safe_row(row) for row in record.rows)
                        csv_file.flush()  # a crash or Ctrl-C still leaves every finished frame's rows on disk
                        report.add_section(record.section)
                        # Once per batch (~1 ms): each batch starts from the same heap.
                        if stats.new % args.batch_size == 0:
                            release_freed_memory()
                        stats.new += 1
                    stats.add(record)
                    journal.add(record)  # last: the frame counts as finished only once all of it is written
                    if stops.requested:
                        stats.stopped_by = stops.signum
                        break
        finally:
            progress.close()
            results.close()  # stops the predictor's threads after the frames they are on
            stats.elapsed_s = time.perf_counter() - started
            for line in _warning_totals(printed_codes):
                print(line, file=sys.stderr)


def _sweep_slice(
    record: FrameRecord,
    result: FramePrediction | FrameFailure,
    sweeps: SweepAssembler,
    sweep_csv: _Lazy3dCsv,
    report: HtmlReport,
) -> FrameRecord:
    """A slice of a sweep: fed to the sweep's 3-D assembly; its own 2-D rows and section are not reported
    (the sweep's 3-D trigger points are). At the sweep's last slice, the sweep's rows and section are written
    and carried by this slice's record (so a resumed run restores them from the journal)."""
    analysed = isinstance(result, FramePrediction) and record.rejected_reason is None
    done = sweeps.add(
        result.frame,
        result.label_map if analysed else None,
        result.bmode if analysed else None,
        result.elasto_kpa if analysed else None,
        result.probs if analysed else None,
    )
    record = dataclasses.replace(record, rows=[], section="", trp_counts={})
    if done is None:
        return record
    sweep_csv.write(done.rows)
    report.add_section(done.section)
    return dataclasses.replace(record, rows_3d=done.rows, section=done.section, trp_counts=done.trp_counts)


class _Lazy3dCsv:
    """detections_3d.csv, created with its header at the first sweep's rows (a run without sweeps has none)."""

    def __init__(self, path: Path) -> None:
        self.path, self._file, self._writer = path, None, None

    def write(self, rows: list[list[str]]) -> None:
        if not rows and self._file is None:
            return
        if self._file is None:
            self._file = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(DETECTIONS_3D_COLUMNS)
        self._writer.writerows(safe_row(row) for row in rows)
        self._file.flush()

    def __enter__(self) -> _Lazy3dCsv:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()


def _warning_lines(record: FrameRecord, printed: dict[str, int]) -> list[str]:
    """One console line per named warning of the frame, for the first ``PRINTED_PER_CODE`` frames of each code
    (``printed``: frames shown per code so far); the rest are counted at the end of the run."""
    lines = []
    for warning in record.warnings:
        shown = printed.get(warning["code"], 0)
        printed[warning["code"]] = shown + 1
        if shown < PRINTED_PER_CODE:
            lines.append(f"WARNING {record.name}: {warning['code']}: {warning['message']}")
    return lines


def _warning_totals(counts: dict[str, int]) -> list[str]:
    """The end-of-run line for each code shown on more frames than were printed."""
    return [
        f"WARNING: {code} on {n} frame(s) in all (each listed in summary.json and frames.csv)"
        for code, n in counts.items()
        if n > PRINTED_PER_CODE
    ]


def _record_frame(
    result: FramePrediction | FrameFailure,
    input_dir: Path,
    write_failures: dict[str, str],
    overlays: bool = True,
) -> FrameRecord:
    """One finished frame as the journal keeps it: CSV rows and report section, or why it was rejected.
    ``overlays``: whether its overlay was drawn (the report section links it, or says it was not)."""
    frame = result.frame
    if isinstance(result, FrameFailure):
        reason = result.reason.replace(f"{input_dir}{os.sep}", "")  # short names read better
        reason = reason.removeprefix(f"{frame.name}: ")  # the name is printed already
        return FrameRecord(frame.stem, frame.name, rejected_reason=reason)
    if frame.stem in write_failures:
        return FrameRecord(frame.stem, frame.name, rejected_reason=write_failures[frame.stem])
    points = result.trigger_points
    counts: dict[str, int] = {}
    for p in points:
        reported = p.reported_class or p.class_name
        counts[reported] = counts.get(reported, 0) + 1
    frame_warnings = [w.to_dict() for w in result.warnings]
    p_frame = result.p_trp_frame if math.isfinite(result.p_trp_frame) else None
    codes = tuple(w.code for w in result.warnings)
    return FrameRecord(
        frame.stem,
        frame.name,
        rows=[_csv_row(frame, p) for p in points] or [_no_finding_row(frame)],
        frame_row=_frame_row(frame, result.bmode.shape, len(points), "analysed", p_frame, codes),
        # A sweep's slice has no section of its own (the sweep's is written once): not rendered per slice.
        section=""
        if frame.kind == "sweep"
        else frame_section(
            frame,
            f"overlays/{frame.stem}.png" if overlays else None,
            points,
            result.bmode.shape,
            frame_warnings=frame_warnings,
            p_frame=p_frame,
            guidance=result.guidance,
        ),  # fmt: skip
        trp_counts=counts,
        notes=[note.replace(f"{input_dir}{os.sep}", "") for note in result.notes],
        warnings=frame_warnings,
    )


def _write_tables(
    output_dir: Path, frames: list[FrameInput], journal: ProgressJournal, model: LoadedModel, min_frames: int
) -> tuple[list[dict], list[dict]]:
    """frames.csv (every frame found) and loops.csv (trigger points followed through each cine loop, from the
    journal's rows, so a resumed run's frames count too); (the loops' summaries for summary.json, one summary
    per frame found for the report)."""
    by_stem = {f.stem: f for f in frames}
    records = {r.stem: r for r in journal.records}
    lines = [FRAME_COLUMNS]
    for frame in frames:
        record = records.get(frame.stem)
        if record is not None and record.frame_row:
            lines.append(record.frame_row)
        else:
            status = f"rejected: {record.rejected_reason}" if record is not None else "not analysed"
            lines.append(_frame_row(frame, frame.shape, None, status))
    _write_csv(output_dir / "frames.csv", lines)
    frame_summaries = [_frame_summary(dict(zip(FRAME_COLUMNS, line, strict=True))) for line in lines[1:]]

    column = {name: i for i, name in enumerate(CSV_COLUMNS)}
    per_loop: dict[str, list[tuple[int, list[LoopDetection]]]] = {}
    for record in journal.records:
        frame = by_stem.get(record.stem)
        if frame is None or frame.loop is None or record.rejected_reason is not None:
            continue
        detections = [
            LoopDetection(
                frame.frame_index or 0,
                frame.stem,
                frame.t_s,
                row[column["class"]],
                float(row[column["x_px"]]),
                float(row[column["y_px"]]),
                float(row[column["confidence"]] or "nan"),
            )  # fmt: skip
            for row in record.rows
            if row[column["trp_id"]]  # not the "no trigger point found" row
        ]
        per_loop.setdefault(frame.loop, []).append((frame.frame_index or 0, detections))
    summaries: list[dict] = []
    loop_lines = [LOOP_COLUMNS]
    for loop in sorted(per_loop):
        first = next(f for f in frames if f.loop == loop)
        working = first.spacing_mm if first.spacing_mm is not None else model.spacing_mm
        summary, rows = summarise_loop(loop, per_loop[loop], first.spacing_mm, working, min_frames)
        summaries.append(summary)
        loop_lines += rows
    _write_csv(output_dir / "loops.csv", loop_lines)
    return summaries, frame_summaries


def _one_row_per_sweep(
    summaries: list[dict], frames: list[FrameInput], journal: ProgressJournal
) -> list[dict]:
    """The report's and summary's per-input rows with each sweep's slices as one row (frames.csv keeps every
    slice): the sweep's 3-D trigger points, its highest per-slice P(TrP), every warning code of its slices, and
    a link to its section; a sweep not written (stopped, or every slice failed) is "not analysed"."""
    by_stem = {f.stem: f for f in frames}
    points = {r.stem: len(r.rows_3d) for r in journal.records if r.rows_3d or r.section}
    out: list[dict] = []
    for summary in summaries:
        frame = by_stem.get(summary["stem"])
        if frame is None or frame.kind != "sweep":
            out.append(summary)
            continue
        if frame.slice_index == 0 or not out or out[-1].get("sweep") != frame.sweep:
            out.append({
                "stem": frame.sweep, "sweep": frame.sweep, "name": frame.name.rsplit(" slice ", 1)[0],
                "subject_id": summary["subject_id"], "status": "not analysed", "trp_count": None,
                "p_trp_frame": None, "warnings": [], "anchor": "sweep-" + quote(str(frame.sweep), safe=""),
            })  # fmt: skip
        row = out[-1]
        p = summary["p_trp_frame"]
        if p is not None and (row["p_trp_frame"] is None or p > row["p_trp_frame"]):
            row["p_trp_frame"] = p
        row["warnings"] += [code for code in summary["warnings"] if code not in row["warnings"]]
        if summary["stem"] in points:  # the slice whose record carries the finished sweep
            row["status"], row["trp_count"] = "analysed", points[summary["stem"]]
    return out


def _subject_summaries(frame_summaries: list[dict]) -> list[dict]:
    """Per subject (dataset inputs with a manifest's subject_id; empty otherwise): frames found, analysed, with
    a trigger point, trigger points, and the frames with a named warning."""
    subjects: dict[str, dict] = {}
    for frame in frame_summaries:
        if frame["subject_id"] is None:
            continue
        entry = subjects.setdefault(
            frame["subject_id"],
            {"subject_id": frame["subject_id"], "frames_found": 0, "frames_analysed": 0, "frames_with_trp": 0,
             "trp_count": 0, "frames_with_warnings": 0},
        )  # fmt: skip
        entry["frames_found"] += 1
        if frame["status"] == "analysed":
            entry["frames_analysed"] += 1
            entry["frames_with_trp"] += bool(frame["trp_count"])
            entry["trp_count"] += frame["trp_count"] or 0
            entry["frames_with_warnings"] += bool(frame["warnings"])
    return [subjects[key] for key in sorted(subjects)]


def _frame_summary(row: dict[str, str]) -> dict:
    """A frames.csv line as the report's per-frame summary."""
    return {
        "stem": row["stem"],
        "name": row["name"],
        "subject_id": row["subject_id"] or None,
        "status": row["status"],
        "trp_count": int(row["trp_count"]) if row["trp_count"] else None,
        "p_trp_frame": float(row["p_trp_frame"]) if row["p_trp_frame"] else None,
        "warnings": [code for code in row["warnings"].split(";") if code],
    }


def _write_csv(path: Path, lines: list) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows(safe_row(list(line)) for line in lines)
    atomic_write_text(path, buffer.getvalue())


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
