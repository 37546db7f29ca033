"""Following trigger points across visits: issue #18's experiment (README, "Longitudinal monitoring").

One synthetic longitudinal set (tpnet.data.synth_longitudinal: per subject a baseline visit, an injection, 1-3
follow-ups, every trigger point's fate known), one subject split as tpnet-train makes it. Steps, each skipped when
its output exists (delete the folder to redo it):
  1. data     the synthetic set                                        <out>/data
  2. train    a detector on the train/val subjects (experiment=cpu_demo) <out>/train (metrics.json: test F1)
  3. export   its best checkpoint as TorchScript                        <out>/export/model.pt
  4. track    tpnet-infer --longitudinal on a dataset root holding only the TEST subjects' frames (hard links, no
              masks: the tracker sees neither the training subjects nor any label)  <out>/test_data, <out>/infer
  5. score    python -m tpnet.evaluation.score_tracks against truth/tracks.csv of those subjects
              <out>/score_metrics.json
The detector has never seen a scored subject: the test subjects are held out of training (and of the validation
split that chooses its checkpoint and calibration).

    .venv/bin/python scripts/longitudinal_tracking.py --out outputs/longitudinal_tracking            # README
    .venv/bin/python scripts/longitudinal_tracking.py --out /tmp/lt --subjects 12 --epochs 2         # smoke run

Writes <out>/longitudinal_tracking.json (settings, step times, the detector's test F1, the scorer's figures with
subject-bootstrap 95 % CIs) and prints the table the README shows, with what explains a missed goal: the
detector's recall at baseline and at follow-ups of TrPs that did or did not respond to the injection (and of TrPs
outside their visit's SWE box), and the registration's error against the probe placement the generator drew.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The goals on the synthetic test subjects.
GOAL_TRACK_ACCURACY = 0.9
GOAL_STIFFNESS_MAE_KPA = 5.0
# Figures of score_tracks' metrics, as the README's table shows them: (key, label, goal text).
FIGURES = (
    ("track_accuracy", "track-matching accuracy (pairs linked correctly / true pairs)", ">= 0.9"),
    ("pair_detection_rate", "  = true pairs detected at both visits", ""),
    ("linking_accuracy", "  x detected pairs linked correctly (the tracker's own share)", ""),
    ("mae_stiffness_mean_kpa", "median abs. error of the change in mean stiffness, kPa", "<= 5"),
    ("mae_stiffness_max_kpa", "median abs. error of the change in max stiffness, kPa", ""),
    ("mae_area_mm2", "median abs. error of the change in area, mm2", ""),
    ("resolved_accuracy", "true resolutions recognised", ""),
)
MATCH_MM = 5.0  # a detection is a true TrP within this distance (the scorer's and tpnet-eval's default)
DETECTION_FIGURES = ("det_f1", "det_precision", "det_recall")
# Manifest columns the tracking input keeps: no mask (the tracker needs no label and must not see one).
TRACKING_COLUMNS = ("sample_id", "subject_id", "visit", "event", "bmode", "elasto", "spacing_mm")


def run(command: list[str], log: Path) -> None:
    """Run ``command`` in the repository, its output into ``log``; a failure stops the experiment."""
    print("+", " ".join(command), flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        process = subprocess.run(command, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if process.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        sys.exit(f"failed (exit {process.returncode}): {' '.join(command)}\n--- {log} (last lines)\n{tail}")


def generate(data: Path, subjects: int, seed: int) -> None:
    from tpnet.data.synth_longitudinal import write_longitudinal_dataset

    write_longitudinal_dataset(data, subjects=subjects, seed=seed)


def train(data: Path, run_dir: Path, epochs: int, samples: int, extra: list[str]) -> None:
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=cpu_demo", "data=folder",
        f"data.root={data}", f"trainer.max_epochs={epochs}", f"data.samples_per_epoch={samples}",
        f"hydra.run.dir={run_dir}", "logger=none", *extra,
    ]  # fmt: skip
    run(command, run_dir.parent / "train.out")


def test_subjects(run_dir: Path) -> list[str]:
    """The run's test subjects, split as tpnet-train split them (tpnet.data.datamodule.setup_data): its resolved
    config.yaml gives the dataset, the seed, the fractions and the fold."""
    from omegaconf import OmegaConf

    from tpnet.core.contract import load_manifest
    from tpnet.data.splits import split_rows

    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.cv.fold is not None:
        sys.exit(f"{run_dir}: a cross-validation fold; this experiment trains one plain split")
    labelled = [row for row in load_manifest(cfg.data.root) if row.mask]
    test = split_rows(labelled, int(cfg.seed), cfg.data.val_fraction, cfg.data.test_fraction)["test"]
    return sorted({row.subject_id for row in test})


def export(checkpoint: Path, model: Path) -> None:
    command = [
        sys.executable, str(ROOT / "scripts" / "export.py"), f"checkpoint={checkpoint}", f"output={model}",
        f"hydra.run.dir={model.parent}", "log_to_mlflow=false",
    ]  # fmt: skip
    run(command, model.parent / "export.out")


def write_tracking_input(data: Path, target: Path, subjects: list[str]) -> int:
    """A dataset root with only ``subjects``' rows (TRACKING_COLUMNS) and their B-mode and SWE files, hard-linked
    (copied across file systems): manifest paths must stay inside their root. Returns the number of frames."""
    wanted = set(subjects)
    with (data / "manifest.csv").open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["subject_id"] in wanted]
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    shutil.copy2(data / "dataset.yaml", partial / "dataset.yaml")
    for row in rows:
        for column in ("bmode", "elasto"):
            if not row.get(column):
                continue
            destination = partial / row[column]
            destination.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(data / row[column], destination)
            except OSError:
                shutil.copy2(data / row[column], destination)
    with (partial / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(
            fh, fieldnames=list(TRACKING_COLUMNS), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    partial.rename(target)  # complete or absent: a killed run never leaves half an input behind
    return len(rows)


def track(model: Path, data: Path, test_data: Path, infer: Path, subjects: list[str]) -> None:
    if not test_data.exists():
        write_tracking_input(data, test_data, subjects)
    command = [
        sys.executable, "-m", "tpnet.inference.cli", "--model", str(model), "--input", str(test_data),
        "--output", str(infer), "--longitudinal", "--device", "cpu",
    ]  # fmt: skip
    run(command, infer.parent / "infer.out")


def score(truth: Path, tracks: Path, subjects: list[str], metrics: Path, n_boot: int) -> None:
    command = [
        sys.executable, "-m", "tpnet.evaluation.score_tracks", "--truth", str(truth), "--tracks", str(tracks),
        "--subjects", ",".join(subjects), "--n-boot", str(n_boot), "--out", str(metrics),
    ]  # fmt: skip
    run(command, metrics.parent / "score.out")


def step(name: str, done: bool, action, timings: dict) -> None:
    """Run ``action`` unless ``done``; its wall time in ``timings`` (a skipped step keeps what it has there)."""
    if done:
        print(f"[{name}] exists, skipped", flush=True)
        timings.setdefault(name, None)
        return
    started = time.perf_counter()
    action()
    timings[name] = round(time.perf_counter() - started, 1)
    print(f"[{name}] {timings[name]:.1f} s", flush=True)


def _cell(value: object, ci: object = None, digits: int = 3) -> str:
    if not isinstance(value, (int, float)) or value != value:
        return "n/a"
    text = f"{value:.{digits}f}"
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        text += f" ({ci[0]:.{digits}f}-{ci[1]:.{digits}f})"
    return text


def _count_tracks(truth: Path, subjects: list[str]) -> dict[str, int]:
    """Truth rows of these subjects by status (new at baseline counts as new too)."""
    counts: dict[str, int] = {}
    with truth.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["subject_id"] in subjects:
                key = (
                    "new_at_follow_up"
                    if row["status"] == "new" and row["visit_index"] != "0"
                    else row["status"]
                )
                counts[key] = counts.get(key, 0) + 1
    return counts


def outside_swe_box(data: Path, subjects: list[str]) -> set[tuple[str, str]]:
    """(sample_id, track_id) of the true TrPs whose centre lies outside their visit's SWE box (truth JSON): the
    detector sees them on B-mode alone."""
    outside = set()
    for path in sorted((data / "truth").glob("*.json")):
        truth = json.loads(path.read_text())
        if truth["subject_id"] not in subjects:
            continue
        box = truth["swe_box_mm"]
        for track in truth["tracks"]:
            if track["status"] == "resolved":
                continue
            inside = (box["left"] <= track["x_mm"] <= box["left"] + box["width"]
                      and box["top"] <= track["y_mm"] <= box["top"] + box["height"])  # fmt: skip
            if not inside:
                outside.add((truth["sample_id"], str(track["track_id"])))
    return outside


def recall_by_response(
    truth: Path,
    detections: Path,
    subjects: list[str],
    match_mm: float,
    outside: set[tuple[str, str]] = frozenset(),
) -> dict:
    """Where the detector finds the true TrPs present at a visit: at baseline, at follow-ups of TrPs that did not
    respond to the injection, and of those that did (softer and smaller); the TrPs in ``outside`` (sample_id,
    track_id: outside the SWE box) in a group of their own. {group: [found, present]}, one-to-one matching in each
    visit's own frame (``match_centroids``, as the scorer matches)."""
    import numpy as np

    from tpnet.evaluation.metrics import match_centroids

    found: dict[str, list[float]] = {}
    with detections.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("x_mm"):  # a frame with no TrP has one row with empty cells
                found.setdefault(row["stem"], []).append((float(row["x_mm"]), float(row["y_mm"])))
    present: dict[str, list[dict]] = {}
    with truth.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["subject_id"] in subjects and row["status"] != "resolved":
                present.setdefault(row["sample_id"], []).append(row)
    counts = {"baseline": [0, 0], "follow-up, no response": [0, 0], "follow-up, responded": [0, 0],
              "outside the SWE box (any visit)": [0, 0]}  # fmt: skip
    for stem, rows in present.items():
        true_xy = np.array([(float(r["x_mm"]), float(r["y_mm"])) for r in rows])
        pairs, _ = match_centroids(
            np.array(found.get(stem, []), np.float64).reshape(-1, 2), true_xy, match_mm
        )
        matched = {gt for _, gt in pairs}
        for index, row in enumerate(rows):
            group = ("outside the SWE box (any visit)" if (stem, row["track_id"]) in outside else
                     "baseline" if row["visit_index"] == "0" else
                     "follow-up, responded" if float(row["softening"] or 0) > 0 else "follow-up, no response")  # fmt: skip
            counts[group][0] += index in matched
            counts[group][1] += 1
    return counts


def registration_errors(data: Path, visits: Path) -> dict:
    """The registration's estimate (visits.csv: lateral shift, tilt) against the probe placement the generator
    drew (truth/<sample_id>.json), per follow-up visit, split by whether tpnet-infer called it reliable:
    {"reliable" | "flagged": {"n", "median_abs_lateral_error_mm", "max_abs_lateral_error_mm",
    "median_abs_tilt_error_deg"}}."""
    import numpy as np

    errors: dict[str, list[tuple[float, float]]] = {"reliable": [], "flagged": []}
    with visits.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if not row["lateral_shift_mm"]:  # the baseline (nothing to register) or a visit left out
                continue
            probe = json.loads((data / "truth" / f"{row['stem']}.json").read_text())["probe"]
            group = "reliable" if row["registration_reliable"] == "yes" else "flagged"
            errors[group].append((abs(float(row["lateral_shift_mm"]) - probe["dx_mm"]),
                                  abs(float(row["tilt_deg"]) - probe["tilt_deg"])))  # fmt: skip
    summary = {}
    for group, pairs in errors.items():
        lateral, tilt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
        summary[group] = {
            "n": len(pairs),
            "median_abs_lateral_error_mm": round(float(np.median(lateral)), 3) if pairs else None,
            "max_abs_lateral_error_mm": round(float(lateral.max()), 3) if pairs else None,
            "median_abs_tilt_error_deg": round(float(np.median(tilt)), 3) if pairs else None,
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "longitudinal_tracking")
    parser.add_argument("--subjects", type=int, default=120, help="one study (2-4 visits) each")
    parser.add_argument("--seed", type=int, default=0, help="the generator's seed")
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--samples-per-epoch", type=int, default=336, help="patches per epoch (the demo's)")
    parser.add_argument("--n-boot", type=int, default=1000, help="subject-bootstrap resamples")
    parser.add_argument("--until", choices=("data", "train", "export", "track", "score"), default="score",
                        help="stop after this step")  # fmt: skip
    parser.add_argument("override", nargs="*", help="extra tpnet-train overrides")
    args = parser.parse_args()
    out = args.out.resolve()
    data, run_dir, model = out / "data", out / "train", out / "export" / "model.pt"
    test_data, infer, metrics = out / "test_data", out / "infer", out / "score_metrics.json"
    order = ("data", "train", "export", "track", "score")
    last = order.index(args.until)
    summary = out / "longitudinal_tracking.json"
    # A skipped step keeps the time it took when it ran (an earlier call's summary).
    timings: dict[str, float | None] = (
        json.loads(summary.read_text())["step_seconds"] if summary.exists() else {}
    )

    step("data", (data / "manifest.csv").exists(), lambda: generate(data, args.subjects, args.seed), timings)
    if last >= 1:
        step("train", (run_dir / "metrics.json").exists(),
             lambda: train(data, run_dir, args.epochs, args.samples_per_epoch, args.override), timings)  # fmt: skip
    subjects = test_subjects(run_dir) if last >= 1 else []
    if last >= 2:
        step("export", model.exists(), lambda: export(run_dir / "checkpoints" / "best.pt", model), timings)
    if last >= 3:
        step("track", (infer / "tracks.csv").exists(), lambda: track(model, data, test_data, infer, subjects),
             timings)  # fmt: skip
    if last >= 4:
        step("score", metrics.exists(),
             lambda: score(data / "truth" / "tracks.csv", infer / "tracks.csv", subjects, metrics, args.n_boot),
             timings)  # fmt: skip

    results: dict = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": {
            "subjects": args.subjects,
            "seed": args.seed,
            "epochs": args.epochs,
            "samples_per_epoch": args.samples_per_epoch,
            "n_boot": args.n_boot,
            "train_overrides": args.override,
        },  # fmt: skip
        "paths": {"data": str(data), "train": str(run_dir), "model": str(model), "infer": str(infer)},
        "step_seconds": timings,
        "test_subjects": subjects,
    }
    if subjects:
        results["test_truth_rows_by_status"] = _count_tracks(data / "truth" / "tracks.csv", subjects)
        report = json.loads((run_dir / "metrics.json").read_text())
        if report.get("n_subjects") != len(subjects):  # the split recomputed here must be the run's
            sys.exit(
                f"{run_dir}: tested {report.get('n_subjects')} subjects, the split here has {len(subjects)}"
            )
        results["detection_test"] = {k: report.get(k) for k in DETECTION_FIGURES} | {
            "ci95": {k: (report.get("ci95") or {}).get(k) for k in DETECTION_FIGURES}
        }
    if metrics.exists():
        results["tracking"] = json.loads(metrics.read_text())
        results["detector_recall_by_response"] = recall_by_response(
            data / "truth" / "tracks.csv",
            infer / "detections.csv",
            subjects,
            MATCH_MM,
            outside_swe_box(data, subjects),
        )
        results["registration_vs_truth"] = registration_errors(data, infer / "visits.csv")
    summary.write_text(json.dumps(results, indent=2) + "\n")
    _print_table(results)


def _print_table(results: dict) -> None:
    detection = results.get("detection_test")
    if detection:
        ci = detection["ci95"]
        print(f"\ndetector on the {len(results['test_subjects'])} test subjects' frames: F1 "
              f"{_cell(detection['det_f1'], ci.get('det_f1'))}, precision "
              f"{_cell(detection['det_precision'], ci.get('det_precision'))}, recall "
              f"{_cell(detection['det_recall'], ci.get('det_recall'))}")  # fmt: skip
    tracking = results.get("tracking")
    if not tracking:
        return
    figures, ci = dict(tracking["metrics"]), tracking["ci"]
    # The two factors of the accuracy, from the counts when the scorer does not report them (no CI then).
    detected = figures["n_correct_pairs"] + figures["n_broken_pairs"]
    figures.setdefault(
        "pair_detection_rate", detected / figures["n_true_pairs"] if figures["n_true_pairs"] else None
    )
    figures.setdefault("linking_accuracy", figures["n_correct_pairs"] / detected if detected else None)
    print("\n| figure (test subjects) | value (95 % CI, subject bootstrap) | goal |")
    print("|---|---|---|")
    for key, label, goal in FIGURES:
        print(f"| {label} | {_cell(figures.get(key), ci.get(key))} | {goal} |")
    print(f"\n{figures.get('n_subjects')} test subjects, {figures.get('n_true_pairs')} true visit-to-visit pairs "
          f"({figures.get('n_correct_pairs')} linked correctly, {figures.get('n_missed_pairs')} missed by the "
          f"detector, {figures.get('n_broken_pairs')} linked to another track), "
          f"{figures.get('n_true_resolutions')} true resolutions; truth rows by status: "
          f"{results.get('test_truth_rows_by_status')}")  # fmt: skip
    recall = results.get("detector_recall_by_response") or {}
    print("detector recall on the TrPs present at a visit (test subjects): " + ", ".join(
        f"{group} {hit}/{total}" for group, (hit, total) in recall.items()))  # fmt: skip
    for group, block in (results.get("registration_vs_truth") or {}).items():
        print(f"registration vs the drawn probe placement, {group} visits ({block['n']}): lateral error median "
              f"{_cell(block['median_abs_lateral_error_mm'])} mm (max {_cell(block['max_abs_lateral_error_mm'])}), "
              f"tilt error median {_cell(block['median_abs_tilt_error_deg'])} deg")  # fmt: skip
    met = (figures.get("track_accuracy", 0) >= GOAL_TRACK_ACCURACY
           and figures.get("mae_stiffness_mean_kpa", float("inf")) <= GOAL_STIFFNESS_MAE_KPA)  # fmt: skip
    print(f"goals (accuracy >= {GOAL_TRACK_ACCURACY}, stiffness-change error <= {GOAL_STIFFNESS_MAE_KPA} kPa): "
          f"{'met' if met else 'NOT met'}; step times (s): {results['step_seconds']}")  # fmt: skip


if __name__ == "__main__":
    main()
