"""``tpnet-infer``: run an exported model on a folder of frames; write masks, overlays, CSV, JSON and HTML.

Exit codes: 0 every input analysed; 3 some inputs rejected (all others still analysed);
2 usage error or unusable model. A bad frame never stops the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import cv2
import torch
from tqdm import tqdm

from tpnet import __version__
from tpnet.atomic import atomic_write_text
from tpnet.data.io import write_png
from tpnet.inference.inputs import FrameInput, InputError, Rejection, SpacingAssumedWarning, discover_inputs
from tpnet.inference.memory import bound_cpu_memory, release_freed_memory
from tpnet.inference.model_file import LoadedModel, ModelFileError, load_model_file
from tpnet.inference.overlay import render_overlay
from tpnet.inference.postprocess import TriggerPoint, trp_class_indices
from tpnet.inference.predictor import FrameFailure, FramePrediction, Predictor
from tpnet.inference.report import HtmlReport

EXIT_OK, EXIT_USAGE, EXIT_REJECTED = 0, 2, 3
CSV_COLUMNS: tuple[str, ...] = (
    "stem", "trp_id", "class", "x_px", "y_px", "x_mm", "y_mm", "area_mm2",
    "stiffness_kpa_mean", "confidence", "nearest_vessel_mm",
)  # fmt: skip
OUTPUT_FILES: tuple[str, ...] = ("detections.csv", "summary.json", "report.html")
OUTPUT_DIRS: tuple[str, ...] = ("masks", "overlays")


class UsageError(ValueError):
    pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tpnet-infer",
        description="Detect myofascial trigger points in ultrasound frames with an exported tpnet model.",
        epilog="Input: a dataset root (manifest.csv + dataset.yaml) or a folder of <name>_bmode.<png|tif|tiff|npy> "
        'files with optional <name>_elasto.<tif|tiff|npy> (kPa) and <name>.json ({"spacing_mm": S}). '
        "Exit codes: 0 all analysed, 3 some inputs rejected, 2 usage error or unusable model.",
    )
    parser.add_argument("--model", required=True, type=Path, help="exported model file (.pt or .pt2)")
    parser.add_argument("--input", required=True, type=Path, help="folder of frames or dataset root")
    parser.add_argument("--output", required=True, type=Path, help="new or empty folder for the results")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available, else cpu")
    parser.add_argument(
        "--batch-size", type=_positive_int, default=4, help="frames per network call (default 4)"
    )
    parser.add_argument(
        "--spacing-mm", type=_positive_float, help="pixel size in mm for frames without their own"
    )
    parser.add_argument("--tta", action="store_true", help="average with a left-right flipped pass (slower)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace earlier results (masks/, overlays/, csv, json, html) in OUTPUT",
    )
    parser.add_argument(
        "--workers",
        type=_positive_int,
        default=2,
        help="threads reading frames and writing results while the network runs (default 2; more on a GPU)",
    )
    return parser


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


def _check_paths(input_dir: Path, output_dir: Path, overwrite: bool) -> tuple[Path, Path]:
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    if not input_dir.is_dir():
        raise UsageError(f"{input_dir}: input folder not found")
    if output_dir == input_dir or output_dir.is_relative_to(input_dir):
        raise UsageError(f"{output_dir}: output folder must not be the input folder or inside it")
    if input_dir.is_relative_to(output_dir):
        raise UsageError(f"{output_dir}: output folder must not contain the input folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"{output_dir}: output exists and is not a folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise UsageError(
            f"{output_dir}: output folder is not empty; use --overwrite to replace earlier results"
        )
    return input_dir, output_dir


LOCK_NAME = ".tpnet-infer.lock"


def _lock_output(output_dir: Path) -> Path:
    """One tpnet-infer per output folder: a second run would delete or mix the first one's files. The lock
    holds the owner's PID; one left by a killed run (its process gone) is taken over."""
    output_dir.mkdir(parents=True, exist_ok=True)
    lock = output_dir / LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is not None and owner != os.getpid() and _process_alive(owner):
                raise UsageError(
                    f"{output_dir}: another tpnet-infer (process {owner}) is writing to this folder; "
                    f"wait for it or choose another --output"
                ) from None
            lock.unlink(missing_ok=True)  # stale: left by a run that was killed
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()}\n")
        return lock
    raise UsageError(f"{output_dir}: cannot lock the output folder ({lock})")


def _lock_owner(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip())
    except (OSError, ValueError):  # vanished meanwhile, or half-written: treat as stale
        return None


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _prepare_output(output_dir: Path) -> None:
    """Remove only what an earlier run wrote, so stale masks never mix with new ones."""
    for name in OUTPUT_DIRS:
        shutil.rmtree(output_dir / name, ignore_errors=True)
        (output_dir / name).mkdir(parents=True)
    for name in OUTPUT_FILES:
        (output_dir / name).unlink(missing_ok=True)


def _fmt(value: float, digits: int) -> str:
    return "" if not math.isfinite(value) else f"{value:.{digits}f}"


def _csv_row(stem: str, p: TriggerPoint) -> list[str]:
    return [
        stem, str(p.trp_id), p.class_name, _fmt(p.x_px, 2), _fmt(p.y_px, 2), _fmt(p.x_mm, 3), _fmt(p.y_mm, 3),
        _fmt(p.area_mm2, 3), _fmt(p.stiffness_kpa_mean, 2), _fmt(p.confidence, 4), _fmt(p.nearest_vessel_mm, 3),
    ]  # fmt: skip


def _error(message: str) -> int:
    print(f"tpnet-infer: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    # Damaged PNGs are reported per frame; OpenCV's own C++ warnings would only add noise.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        input_dir, output_dir = _check_paths(args.input, args.output, args.overwrite)
    except UsageError as exc:
        return _error(str(exc))
    bound_cpu_memory()  # before the model's first tensor: peak memory must not grow with the frame count
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda requested but no CUDA GPU is available; use --device cpu")
    try:
        model = load_model_file(args.model, device)
    except ModelFileError as exc:
        return _error(f"unusable model: {exc}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SpacingAssumedWarning)
            frames, rejected = discover_inputs(input_dir, args.spacing_mm, model.spacing_mm)
    except InputError as exc:
        return _error(str(exc))
    run_warnings = [str(w.message) for w in caught if issubclass(w.category, SpacingAssumedWarning)]
    if not frames and not rejected:
        return _error(
            f"{input_dir}: no frames found (expected <name>_bmode.<png|tif|tiff|npy> files or a dataset root)"
        )

    try:
        lock = _lock_output(output_dir)
    except UsageError as exc:
        return _error(str(exc))
    try:
        return _analyse(model, frames, rejected, run_warnings, input_dir, output_dir, device, args, started)
    finally:
        lock.unlink(missing_ok=True)


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
) -> int:
    """Analyse every frame and write all outputs; the exit code."""
    _prepare_output(output_dir)
    for message in run_warnings:
        print(f"WARNING: {message}", file=sys.stderr)
    for r in rejected:
        print(f"REJECTED {r.name}: {r.reason}")
    frames_found = len(frames) + len(rejected)
    report = HtmlReport(output_dir / "report.html")
    try:
        stats = _run(model, frames, rejected, input_dir, output_dir, report, device, args)
    except BaseException:
        report.abort()
        raise
    counts = {
        "frames_found": frames_found,
        "frames_processed": stats.processed,
        "frames_rejected": len(rejected),
    }
    summary = {
        "tool": "tpnet-infer",
        "tpnet_version": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "input": str(input_dir),
        "output": str(output_dir),
        "settings": {
            "device": device,
            "batch_size": args.batch_size,
            "tta": args.tta,
            "spacing_mm": args.spacing_mm,
        },
        "counts": counts,
        "trp_by_class": stats.trp_counts,
        "timing": {
            "total_s": round(time.perf_counter() - started, 3),  # model loading included
            "frames_per_s": round(stats.processed / stats.elapsed_s, 3) if stats.elapsed_s > 0 else None,
        },
        "model": {"file": str(Path(args.model).resolve()), "kind": model.kind, "meta": model.meta},
        "rejected": [{"name": r.name, "reason": r.reason} for r in rejected],
        "warnings": run_warnings,
    }
    _write_json(output_dir / "summary.json", summary)
    report.finish(
        model_name=str(model.meta["model_name"]),
        model_file=Path(args.model).name,
        input_name=input_dir.name,
        created=datetime.now().strftime("%Y-%m-%d %H:%M"),
        counts=counts,
        trp_counts=stats.trp_counts,
        classes=model.classes,
        rejected=rejected,
        warnings=run_warnings,
    )
    print(
        f"{stats.processed} frame(s) analysed, {len(rejected)} rejected, "
        f"{sum(stats.trp_counts.values())} trigger point(s) found; results in {output_dir}"
    )
    return EXIT_REJECTED if rejected else EXIT_OK


@dataclass
class RunStats:
    processed: int
    trp_counts: dict[str, int]
    elapsed_s: float


def _run(
    model: LoadedModel,
    frames: list[FrameInput],
    rejected: list[Rejection],
    input_dir: Path,
    output_dir: Path,
    report: HtmlReport,
    device: str,
    args: argparse.Namespace,
) -> RunStats:
    """Predict and write every frame as it arrives; failures are appended to ``rejected``."""
    predictor = Predictor(model, device=device, batch_size=args.batch_size, tta=args.tta)
    trp_counts = {model.classes[i]: 0 for i in trp_class_indices(model.classes)}
    processed = 0
    started = time.perf_counter()
    with (output_dir / "detections.csv").open("w", newline="", encoding="utf-8") as csv_file:
        writer = csv.writer(csv_file)
        writer.writerow(CSV_COLUMNS)

        def write_images(result: FramePrediction) -> None:  # runs in the predictor's worker threads
            stem = result.frame.stem
            write_png(output_dir / "masks" / f"{stem}.png", result.label_map)
            overlay = render_overlay(
                result.bmode, result.label_map, model.classes, result.trigger_points, result.elasto_kpa
            )
            write_png(output_dir / "overlays" / f"{stem}.png", overlay)

        results = predictor.run(frames, workers=args.workers, finish=write_images)
        for result in tqdm(results, total=len(frames), unit="frame", desc="tpnet-infer", dynamic_ncols=True):
            if isinstance(result, FrameFailure):
                reason = result.reason.replace(f"{input_dir}{os.sep}", "")  # short names read better
                reason = reason.removeprefix(f"{result.frame.name}: ")  # the name is printed already
                rejected.append(Rejection(result.frame.name, reason))
                tqdm.write(f"REJECTED {result.frame.name}: {reason}")
                continue
            stem = result.frame.stem
            writer.writerows(_csv_row(stem, p) for p in result.trigger_points)
            csv_file.flush()  # a crash or Ctrl-C still leaves every finished frame's rows on disk
            # Once per batch (~1 ms): each batch starts from the same heap.
            if processed % args.batch_size == 0:
                release_freed_memory()
            report.add_frame(result.frame, f"overlays/{stem}.png", result.trigger_points, result.bmode.shape)
            for p in result.trigger_points:
                trp_counts[p.class_name] = trp_counts.get(p.class_name, 0) + 1
            processed += 1
    return RunStats(processed, trp_counts, time.perf_counter() - started)


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
