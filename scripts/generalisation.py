"""Generalisation benchmark (issue #12): does a model trained on one simulator's data hold up on another's, what
does each of tpnet's additions to a plain U-Net contribute, and how does the recipe do on real images?

    .venv/bin/python scripts/generalisation.py --out outputs/generalisation            # 36 min on 2 CPU cores
    .venv/bin/python scripts/generalisation.py --out outputs/generalisation --skip-existing   # resume
    .venv/bin/python scripts/generalisation.py --out /tmp/g --only planned_A_B,baseline_A_B
    .venv/bin/python scripts/generalisation.py --out /tmp/g --smoke                  # tiny: a test, not a figure

Everything runs through tpnet's own command-line tools, as a user would run them: ``tpnet-data synth`` makes the
data sets, ``tpnet-train`` trains each recipe (wall time measured around the process), ``tpnet-eval`` scores a
checkpoint on the test split of another data set. Data sets (docs/generalisation.md):
  A      ``--appearance wide`` (domain randomisation), seed 1: what the recipes train on
  A_lit  ``--appearance literature``, seed 1: the same anatomy draws, narrow appearance ranges (ablation)
  B      ``--appearance shifted``, seed 2: another frame size, pixel size, speckle, TGC, SWE box, confounders
  real   the DL_Track aponeurosis screenshots (../shared/data/dltrack-apo-sample), converted by
         ``python -m tpnet.data.dltrack``; Dice and boundary distances (ASSD, HD95 in mm) at native resolution
Every data set is split by subject with the same fractions and seed, so a checkpoint scored on B's test split with
``tpnet-eval data.root=B`` sees exactly the frames the B-trained model is tested on.

Outputs under --out: results.jsonl (one line per row), table.md (the README's tables, the machine, the command),
rows/<row>.json (a finished row: skipped by --skip-existing), runs/<training>/ (tpnet-train's run folders,
wall_s.json once finished), evals/, logs/ (each tool's output), data/ (the data sets).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DLTRACK_SOURCE = REPO.parent / "shared" / "data" / "dltrack-apo-sample"

# ------------------------------------------------------------------------------------------------ the recipes
# Plain tpnet-train override lists: edit these to change a recipe. {epochs} is filled from --epochs.
COMMON = [
    "trainer.device=cpu",
    "trainer.max_epochs={epochs}",
    "trainer.test_after_training=false",  # every row is scored by tpnet-eval; not part of the training time
    "data.test_fraction=0.25",  # 10 of 40 subjects: CIs narrow enough to tell recipes apart
    "data.val_fraction=0.15",
    "seed=0",
]
# The planned recipe: tpnet-train's default for a user's data.root, nothing added: the plan from the data set,
# augment=ultrasound, deep supervision and the calibrated post-processing (min_mean_prob included) are defaults.
PLANNED: list[str] = []
# The same U-Net without tpnet's additions (configs/experiment/plain_baseline.yaml says what it sets).
# Crops the size of the frame ({size}: --size): whole frames of the synthetic sets.
BASELINE = ["experiment=plain_baseline", "data.patch_size=[{size},{size}]"]
# "No planning": the planned recipe with cpu_demo's fixed values instead of the plan's.
FIXED_INSTEAD_OF_PLAN = [
    "data.spacing_mm=0.2",
    "data.patch_size=[96,96]",
    "data.batch_size=16",
    "model.depth=4",
    "data.bmode_norm=none",
]
# Default post-processing, i.e. what calibration would otherwise have changed (scoring only, no retraining).
DEFAULT_POSTPROCESS = "postprocess={threshold:0.5,min_area_mm2:2.0,match_mm:5.0}"
# Real images: B-mode only, no trigger points (so Dice is monitored), fixed split from the converter.
# Epochs: --real-epochs. On 2 shared CPU cores the plan's 448 px patches (then depth 6, batch 4) ran at ~0.4 frames/s, the
# baseline's 256 px crops ~4x faster: 48 crops per epoch keeps the pair near 10 min at 10 epochs.
REAL = ["data.channels=[bmode]", "trainer.monitor=val/dice_mean", "data.samples_per_epoch=48"]
# The baseline at native spacing on 600-1000 px frames would take 5x longer on CPU: 256 px crops instead.
REAL_BASELINE = ["data.patch_size=[256,256]", "data.batch_size=4"]


def replace(overrides: list[str], *new: str) -> list[str]:
    """``overrides`` with each key in ``new`` set to its new value (added when absent)."""
    keys = {item.split("=", 1)[0] for item in new}
    return [item for item in overrides if item.split("=", 1)[0] not in keys] + list(new)


@dataclass(frozen=True)
class Training:
    name: str
    dataset: str  # A | A_lit | B | real
    overrides: tuple[str, ...]


@dataclass(frozen=True)
class Row:
    name: str
    table: str  # generalisation | ablation | real
    label: str
    training: Training
    test_on: str
    eval_overrides: tuple[str, ...] = ()


def recipes() -> dict[str, Row]:
    t = {
        "planned_A": Training("planned_A", "A", tuple(PLANNED)),
        "planned_B": Training("planned_B", "B", tuple(PLANNED)),
        "baseline_A": Training("baseline_A", "A", tuple(BASELINE)),
        "planned_A_lit": Training("planned_A_lit", "A_lit", tuple(PLANNED)),
        "no_fg_A": Training("no_fg_A", "A", tuple(replace(PLANNED, "data.fg_fraction=0"))),
        "no_us_aug_A": Training("no_us_aug_A", "A", tuple(replace(PLANNED, "augment=default"))),
        "no_ds_A": Training("no_ds_A", "A", tuple(replace(PLANNED, "model.deep_supervision=false"))),
        "no_plan_A": Training("no_plan_A", "A", tuple(replace(PLANNED, *FIXED_INSTEAD_OF_PLAN))),
        "real_planned": Training("real_planned", "real", tuple(PLANNED + REAL)),
        "real_baseline": Training("real_baseline", "real", tuple(replace(BASELINE + REAL, *REAL_BASELINE))),
    }
    rows = [
        Row("planned_A_A", "generalisation", "planned", t["planned_A"], "A"),
        Row("planned_A_B", "generalisation", "planned", t["planned_A"], "B"),
        Row("planned_B_B", "generalisation", "planned", t["planned_B"], "B"),
        Row("baseline_A_A", "generalisation", "plain baseline", t["baseline_A"], "A"),
        Row("baseline_A_B", "generalisation", "plain baseline", t["baseline_A"], "B"),
        Row("no_domain_randomisation", "ablation", "no domain randomisation (trained on A_lit)",
            t["planned_A_lit"], "B"),
        Row("no_fg_oversampling", "ablation", "no foreground oversampling (fg_fraction 0)", t["no_fg_A"], "B"),
        Row("no_calibration", "ablation", "no calibration (default post-processing)", t["planned_A"], "B",
            (DEFAULT_POSTPROCESS,)),
        Row("no_us_augmentation", "ablation", "no ultrasound augmentation (augment=default)", t["no_us_aug_A"],
            "B"),
        Row("no_deep_supervision", "ablation", "no deep supervision", t["no_ds_A"], "B"),
        Row("no_planning", "ablation", "no planning (cpu_demo's fixed spacing/patch/batch/depth)", t["no_plan_A"],
            "B"),
        Row("real_planned", "real", "planned", t["real_planned"], "real"),
        Row("real_baseline", "real", "plain baseline (256 px crops)", t["real_baseline"], "real"),
    ]  # fmt: skip
    return {row.name: row for row in rows}


SMOKE_ROWS = ("planned_A_A", "planned_A_B", "no_calibration")


@dataclass
class Settings:
    out: Path
    epochs: int
    real_epochs: int
    subjects: int
    frames_per_subject: int
    size: int
    n_boot: int
    skip_existing: bool
    mlflow: bool
    dltrack_source: Path
    extra: list[str] = field(default_factory=list)  # appended to every training (e.g. smoke sizes)
    trained: dict[str, tuple[Path, float]] = field(default_factory=dict)  # this invocation's trainings


# ------------------------------------------------------------------------------------------------ running tools
def tool(name: str) -> list[str]:
    """A tpnet console script of this interpreter's environment (the installed entry point), else ``-m``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return [str(script)]
    module = {
        "tpnet-data": "tpnet.data.cli",
        "tpnet-train": "tpnet.training.cli",
        "tpnet-eval": "tpnet.evaluation.cli",
    }
    return [sys.executable, "-m", module[name]]


def run_logged(command: list[str], log: Path) -> float:
    """Run ``command``, its output into ``log``; the wall time in s. A failure ends the benchmark with the tail."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$ " + shlex.join(command), file=sys.stderr, flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=False)
    wall_s = time.perf_counter() - start
    if done.returncode != 0:
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise SystemExit(f"generalisation: exit {done.returncode} from {command[0]} (log {log}):\n{tail}")
    return wall_s


def dataset_root(s: Settings, name: str) -> Path:
    return s.out / "data" / name


def make_dataset(s: Settings, name: str) -> Path:
    root = dataset_root(s, name)
    if (root / "manifest.csv").exists():
        return root  # written last by both writers: a complete data set
    if root.exists():
        shutil.rmtree(root)
    if name == "real":
        if not (s.dltrack_source / "images").is_dir():
            raise SystemExit(f"generalisation: {s.dltrack_source}/images not found (--dltrack-source)")
        command = [sys.executable, "-m", "tpnet.data.dltrack", str(s.dltrack_source), str(root)]
    else:
        appearance, seed = {"A": ("wide", 1), "A_lit": ("literature", 1), "B": ("shifted", 2)}[name]
        command = tool("tpnet-data") + [
            "synth", str(root), "--subjects", str(s.subjects), "--frames-per-subject", str(s.frames_per_subject),
            "--seed", str(seed), "--height", str(s.size), "--width", str(s.size), "--appearance", appearance,
        ]  # fmt: skip
    run_logged(command, s.out / "logs" / f"data_{name}.log")
    return root


def train(s: Settings, training: Training) -> tuple[Path, float]:
    """The training's best checkpoint and its wall time, training it unless a finished run is there."""
    run_dir = s.out / "runs" / training.name
    wall_file = run_dir / "wall_s.json"
    checkpoint = run_dir / "checkpoints" / "best.pt"
    if training.name in s.trained:
        return s.trained[training.name]
    if s.skip_existing and wall_file.exists() and checkpoint.exists():
        return checkpoint, float(json.loads(wall_file.read_text())["wall_s"])
    if run_dir.exists():
        shutil.rmtree(run_dir)  # an unfinished or stale run: start it again
    root = make_dataset(s, training.dataset)
    epochs = s.real_epochs if training.dataset == "real" else s.epochs
    overrides = [o.format(epochs=epochs, size=s.size) for o in [*COMMON, *training.overrides]] + s.extra
    logger = (
        [f"logger.tracking_uri=sqlite:///{(s.out / 'mlflow.db').resolve()}"] if s.mlflow else ["logger=none"]
    )
    command = tool("tpnet-train") + [f"data.root={root.resolve()}", *overrides, *logger,
                                     f"hydra.run.dir={run_dir.resolve()}"]  # fmt: skip
    wall_s = run_logged(command, s.out / "logs" / f"train_{training.name}.log")
    if not checkpoint.exists():
        checkpoint = run_dir / "checkpoints" / "last.pt"
    wall_file.write_text(json.dumps({"wall_s": wall_s, "command": shlex.join(command)}) + "\n")
    s.trained[training.name] = checkpoint, wall_s
    return checkpoint, wall_s


def evaluate(s: Settings, row: Row, checkpoint: Path) -> dict:
    """tpnet-eval's metrics report of ``checkpoint`` on the test split of ``row.test_on``."""
    output = s.out / "evals" / f"{row.name}.json"
    command = tool("tpnet-eval") + [
        f"checkpoint={checkpoint.resolve()}", f"data.root={dataset_root(s, row.test_on).resolve()}", "split=test",
        f"output={output.resolve()}", "log_to_mlflow=false", f"evaluation.n_boot={s.n_boot}", "device=cpu",
        *row.eval_overrides, f"hydra.run.dir={(s.out / 'evals' / 'hydra' / row.name).resolve()}",
    ]  # fmt: skip
    make_dataset(s, row.test_on)
    run_logged(command, s.out / "logs" / f"eval_{row.name}.log")
    return json.loads(output.read_text())


# ------------------------------------------------------------------------------------------------ real images
def bootstrap_mean_ci(values: list[float], n_boot: int, seed: int = 0) -> list[float]:
    """95 % percentile interval of the mean over frames (frames = subjects here)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return [float("nan"), float("nan")]
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, arr.size, size=(n_boot, arr.size))].mean(axis=1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def score_segmentation(checkpoint: Path, n_boot: int) -> dict:
    """Per test frame of the real set, at the frame's native resolution: Dice of class 1 and boundary distances.

    The model sees each frame as tpnet-eval does (resampled to its spacing, encoded, whole frame); its
    probabilities are resized back to the stored mask's size, so recipes trained at different spacings are scored
    on the same pixels."""
    import cv2
    import torch
    from omegaconf import OmegaConf

    from tpnet.core.contract import resolve_path
    from tpnet.core.io import read_mask
    from tpnet.core.predict import predict_probs
    from tpnet.data.datamodule import frame_dataset, frame_loader, iter_frames, setup_data
    from tpnet.evaluation.boundary import boundary_distances_mm
    from tpnet.models.from_checkpoint import load_deployable_model

    model, state = load_deployable_model(checkpoint, torch.device("cpu"))
    train_cfg = OmegaConf.create(state["config"])
    data_cfg = train_cfg.data
    data_cfg.spacing_mm = float(state["meta"]["spacing_mm"])
    data = setup_data(data_cfg, int(train_cfg.seed), train_cfg.cv.fold, train_cfg.cv.folds, check=False)
    rows = {row.sample_id: row for row in data.splits["test"]}
    dataset = frame_dataset(data, "test")
    frames, model_spacing = [], float(state["meta"]["spacing_mm"])
    for frame in iter_frames(frame_loader(dataset, list(range(len(dataset))), 0)):
        row = rows[frame["sample_id"]]
        truth = read_mask(resolve_path(data.spec.root, row.mask)) == 1
        probs = predict_probs(model, frame["image"][None], int(state["meta"]["size_multiple"]))[0].numpy()
        native = np.stack([cv2.resize(p, truth.shape[::-1], interpolation=cv2.INTER_LINEAR) for p in probs])
        pred = native.argmax(axis=0) == 1
        native_spacing = float(row.spacing_mm if row.spacing_mm is not None else data.spec.spacing_mm)
        overlap = 2.0 * np.logical_and(pred, truth).sum()
        size = pred.sum() + truth.sum()
        distances = boundary_distances_mm(pred, truth, native_spacing)
        frames.append({"sample_id": row.sample_id, "dice": float(overlap / size) if size else 1.0,
                       "tp": int(np.logical_and(pred, truth).sum()), "pred": int(pred.sum()),
                       "truth": int(truth.sum()), **distances})  # fmt: skip
    pooled = 2 * sum(f["tp"] for f in frames) / max(1, sum(f["pred"] + f["truth"] for f in frames))
    out: dict[str, Any] = {"n_frames": len(frames), "model_spacing_mm": model_spacing, "dice_pooled": pooled}
    for key in ("dice", "assd_mm", "hd95_mm"):
        values = [f[key] for f in frames]
        out[key] = float(statistics.fmean(values)) if values else float("nan")
        out[key + "_ci95"] = bootstrap_mean_ci(values, n_boot)
    out["frames_with_empty_prediction"] = sum(f["empty"] == "pred" for f in frames)
    out["frames"] = frames
    return out


# ------------------------------------------------------------------------------------------------ rows and tables
def run_row(s: Settings, row: Row) -> dict:
    row_file = s.out / "rows" / f"{row.name}.json"
    if s.skip_existing and row_file.exists():
        return json.loads(row_file.read_text())
    checkpoint, wall_s = train(s, row.training)
    result: dict[str, Any] = {
        "row": row.name, "table": row.table, "label": row.label, "train_on": row.training.dataset,
        "test_on": row.test_on, "training": row.training.name, "train_wall_s": round(wall_s, 1),
        "overrides": list(row.training.overrides), "eval_overrides": list(row.eval_overrides),
    }  # fmt: skip
    plan_file = checkpoint.parent.parent / "plan.json"
    if plan_file.exists():
        result["plan"] = json.loads(plan_file.read_text())
    report = evaluate(s, row, checkpoint)
    if row.table == "real":
        result["dice_aponeurosis_eval"] = report.get("dice/aponeurosis")
        result["dice_aponeurosis_eval_ci95"] = report.get("ci95", {}).get("dice/aponeurosis")
        result.update(score_segmentation(checkpoint, s.n_boot))
    else:
        ci = report.get("ci95", {})
        for key in ("det_f1", "det_precision", "det_recall", "loc_err_mm", "fp_per_frame", "dice_mean"):
            result[key] = report.get(key)
            result[key + "_ci95"] = ci.get(key)
        result["n_test_frames"] = report.get("n_frames")
        result["n_test_subjects"] = report.get("n_subjects")
    calibration = checkpoint.parent.parent / "calibration.json"
    if calibration.exists() and not row.eval_overrides:
        result["calibrated_postprocess"] = json.loads(calibration.read_text())["chosen"]
    row_file.parent.mkdir(parents=True, exist_ok=True)
    row_file.write_text(json.dumps(result, indent=1, allow_nan=True) + "\n")
    return result


def machine() -> dict:
    import torch

    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version(),
            "load_avg_1min_at_start": round(load, 2)}  # fmt: skip


def _num(value: Any, digits: int = 3) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and not np.isfinite(value))
        else f"{value:.{digits}f}"
    )


def _with_ci(r: dict, key: str, digits: int = 3) -> str:
    ci = r.get(key + "_ci95")
    if not ci or None in ci:
        return _num(r.get(key), digits)
    return f"{_num(r.get(key), digits)} ({_num(ci[0], digits)}–{_num(ci[1], digits)})"


def table_md(results: dict[str, dict], info: dict, command: str) -> str:
    lines = ["# Generalisation benchmark", "", f"Command: `{command}`", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, Python {info['python']} "
             f"(1-min load average at start {info['load_avg_1min_at_start']}: other work on the machine slows "
             "the wall times).", ""]  # fmt: skip
    baseline_wall = (results.get("baseline_A_B") or results.get("baseline_A_A") or {}).get("train_wall_s")
    gen = [r for r in results.values() if r["table"] == "generalisation"]
    if gen:
        lines += ["## Generalisation (detection on the test split, subject-bootstrap 95 % CI)", "",
                  "| recipe | train → test | TrP F1 (95 % CI) | precision | recall | loc. error mm | train wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in gen:
            lines.append(f"| {r['label']} | {r['train_on']} → {r['test_on']} | {_with_ci(r, 'det_f1')} | "
                         f"{_num(r['det_precision'])} | {_num(r['det_recall'])} | {_num(r['loc_err_mm'], 2)} | "
                         f"{r['train_wall_s']:.0f} |")  # fmt: skip
        lines.append("")
    abl = [r for r in results.values() if r["table"] == "ablation"]
    reference = results.get("planned_A_B")
    if abl or reference:
        lines += ["## Ablation: the planned recipe minus one addition, trained on A, tested on B", "",
                  "| variant | TrP F1 (95 % CI) | ΔF1 vs planned | precision | recall | loc. error mm | train wall s "
                  "| wall / baseline |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        ordered = ([reference] if reference else []) + abl
        if results.get("baseline_A_B"):
            ordered.append(results["baseline_A_B"])
        for r in ordered:
            delta = "" if reference is None or r is reference else _delta(r["det_f1"], reference["det_f1"])
            ratio = f"{r['train_wall_s'] / baseline_wall:.2f}" if baseline_wall else "n/a"
            name = "planned (all additions)" if r is reference else r["label"]
            lines.append(f"| {name} | {_with_ci(r, 'det_f1')} | {delta} | {_num(r['det_precision'])} | "
                         f"{_num(r['det_recall'])} | {_num(r['loc_err_mm'], 2)} | {r['train_wall_s']:.0f} | "
                         f"{ratio} |")  # fmt: skip
        lines.append("")
    lines += goal_lines(results)
    real = [r for r in results.values() if r["table"] == "real"]
    if real:
        lines += ["## Real images: DL_Track aponeuroses (B-mode only), test split", "",
                  "Means over test frames at native resolution with bootstrap 95 % CIs over frames (frames = "
                  "subjects: the source has no subject ids). Pooled Dice from tpnet-eval at the model's spacing.",
                  "",
                  "| recipe | frames | Dice (95 % CI) | pooled Dice (tpnet-eval) | ASSD mm (95 % CI) | HD95 mm (95 % CI) "
                  "| model mm/px | train wall s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for r in real:
            lines.append(
                f"| {r['label']} | {r['n_frames']} | {_with_ci(r, 'dice')} | "
                f"{_with_ci(r, 'dice_aponeurosis_eval')} | {_with_ci(r, 'assd_mm', 2)} | "
                f"{_with_ci(r, 'hd95_mm', 2)} | {_num(r['model_spacing_mm'])} | {r['train_wall_s']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines) + "\n"


def _delta(value: float | None, reference: float | None) -> str:
    return "n/a" if value is None or reference is None else f"{value - reference:+.3f}"


def goal_lines(results: dict[str, dict]) -> list[str]:
    out = ["## Goals of issue #12", ""]
    a_b, b_b, base = results.get("planned_A_B"), results.get("planned_B_B"), results.get("baseline_A_B")
    if a_b and b_b and a_b["det_f1"] is not None and b_b["det_f1"] is not None:
        gap = b_b["det_f1"] - a_b["det_f1"]
        verdict = "met" if gap <= 0.05 else "not met"
        out.append(f"- (A → B) within 0.05 of (B → B): F1 {a_b['det_f1']:.3f} vs {b_b['det_f1']:.3f}, "
                   f"gap {gap:+.3f}: **{verdict}**")  # fmt: skip
    if a_b and base and a_b["det_f1"] is not None and base["det_f1"] is not None:
        ratio = a_b["train_wall_s"] / base["train_wall_s"]
        beats = a_b["det_f1"] > base["det_f1"]
        verdict = "met" if beats and ratio <= 1.5 else "not met"
        out.append(
            f"- planned beats the plain baseline on (A → B) F1 at ≤ 1.5× its wall time: F1 "
            f"{a_b['det_f1']:.3f} vs {base['det_f1']:.3f}, wall time ×{ratio:.2f}: **{verdict}**"
        )
    if len(out) == 2:
        out.append("- (rows missing: run planned_A_B, planned_B_B and baseline_A_B)")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    all_rows = recipes()
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], epilog="rows: " + ", ".join(all_rows)
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--real-epochs", type=int, default=10, help="epochs of the two real-image trainings")
    parser.add_argument("--subjects", type=int, default=96)
    parser.add_argument("--frames-per-subject", type=int, default=3)
    parser.add_argument("--size", type=int, default=160, help="frame size asked of tpnet-data synth (px)")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--only", default=None, help="comma-separated rows (default: all)")
    parser.add_argument(
        "--skip-existing", action="store_true", help="keep finished rows and trainings (resume)"
    )
    parser.add_argument("--mlflow", action="store_true", help="log the trainings to <out>/mlflow.db")
    parser.add_argument("--dltrack-source", type=Path, default=DLTRACK_SOURCE)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes and rows: tests the script, not recipes"
    )
    args = parser.parse_args(argv)

    s = Settings(args.out, args.epochs, args.real_epochs, args.subjects, args.frames_per_subject, args.size, args.n_boot,
                 args.skip_existing, args.mlflow, args.dltrack_source)  # fmt: skip
    names = list(all_rows)
    if args.smoke:
        s.epochs, s.real_epochs, s.subjects, s.frames_per_subject, s.size, s.n_boot = 1, 1, 8, 1, 64, 50
        s.extra = ["data.num_workers=0", "calibration.thresholds=[0.5]", "calibration.min_areas_mm2=[2.0]"]
        names = list(SMOKE_ROWS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in all_rows]
        if unknown:
            parser.error(f"unknown row(s) {unknown}; rows: {', '.join(all_rows)}")
    s.out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([Path(sys.executable).name, "scripts/generalisation.py", *(argv or sys.argv[1:])])
    info = machine()
    results: dict[str, dict] = {}
    if s.skip_existing:  # rows finished earlier (another --only) stay in the tables
        for path in sorted((s.out / "rows").glob("*.json")):
            result = json.loads(path.read_text())
            results[result["row"]] = result
    start = time.perf_counter()
    for name in names:
        results[name] = run_row(s, all_rows[name])
        print(f"row {name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)
    ordered = {n: results[n] for n in all_rows if n in results}
    with (s.out / "results.jsonl").open("w") as f:
        for result in ordered.values():
            slim = {k: v for k, v in result.items() if k not in ("frames", "plan")}
            f.write(json.dumps(slim) + "\n")
    (s.out / "table.md").write_text(table_md(ordered, info, command))
    print(f"wrote {s.out / 'results.jsonl'} and {s.out / 'table.md'} ({time.perf_counter() - start:.0f} s)",
          file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
