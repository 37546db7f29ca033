"""The README's main job: every stage through the real command-line tools, on the embedded synthetic data.

generate + check -> tpnet-train (experiment=cpu_demo) -> tpnet-eval -> tpnet-export (.pt and .pt2)
-> tpnet-infer over a plain folder of the test subjects' frames, and over two real frames from outside the training
distribution (with and without --strict) -> a summary of where everything is.
Extra arguments are passed to tpnet-train (e.g. ``trainer.max_epochs=5``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tpnet.configuration import config_dir
from tpnet.core.checkpoint import load_checkpoint
from tpnet.core.contract import resolve_path
from tpnet.data.datamodule import dataset_root, setup_data
from tpnet.tracking.mlflow_logger import resolve_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
REAL_FRAMES = ROOT / "tests" / "fixtures" / "dltrack" / "images"  # 2 real DL_Track frames (Apache-2.0)


def run(stage: str, args: list[str], timings: dict[str, float], ok: tuple[int, ...] = (0,)) -> None:
    print(f"\n==> {stage}: {' '.join(args)}", flush=True)
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT)
    timings[stage] = round(time.perf_counter() - start, 1)
    if result.returncode not in ok:
        sys.exit(f"{stage} failed with exit code {result.returncode}")


def clinic_folder(checkpoint: Path, out: Path) -> Path:
    """The test subjects' frames as a clinician would have them: <stem>_bmode.png, <stem>_elasto.tif, <stem>.json."""
    state = load_checkpoint(checkpoint)
    cfg = OmegaConf.create(state["config"])
    data = setup_data(cfg.data, int(cfg.seed), cfg.cv.fold, cfg.cv.folds, check=False)
    out.mkdir(parents=True, exist_ok=True)
    for row in data.splits["test"]:
        shutil.copyfile(resolve_path(data.spec.root, row.bmode), out / f"{row.sample_id}_bmode.png")
        if row.elasto:
            shutil.copyfile(resolve_path(data.spec.root, row.elasto), out / f"{row.sample_id}_elasto.tif")
        (out / f"{row.sample_id}.json").write_text(json.dumps({"spacing_mm": row.spacing_mm}))
    return out


def _warning_counts(folder: Path, count: str | None = None) -> object:
    summary = json.loads((folder / "summary.json").read_text())
    return summary["counts"][count] if count else summary.get("warning_counts")


def main() -> None:
    overrides = sys.argv[1:]
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = ROOT / "outputs" / "demo" / stamp
    timings: dict[str, float] = {}

    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=cpu_demo", *overrides])
    start = time.perf_counter()
    root = dataset_root(cfg.data)  # generated once into the cache, reused afterwards
    timings["generate"] = round(time.perf_counter() - start, 1)
    run("check", ["-m", "tpnet.data.cli", "check", str(root)], timings)
    run(
        "train",
        # Tested after training too (seconds): the model card then carries its test figures (issue #14).
        ["-m", "tpnet.training.cli", "experiment=cpu_demo", f"hydra.run.dir={out / 'train'}", *overrides],
        timings,
    )  # fmt: skip
    best = out / "train" / "checkpoints" / "best.pt"
    metrics = out / "eval" / "metrics_test.json"
    run("evaluate", ["-m", "tpnet.evaluation.cli", f"checkpoint={best}", f"output={metrics}",
                     f"hydra.run.dir={out / 'eval'}"], timings)  # fmt: skip
    model_pt, model_pt2 = out / "export" / "model.pt", out / "export" / "model.pt2"
    run("export", ["-m", "tpnet.export.cli", f"checkpoint={best}", f"output={model_pt}",
                   f"hydra.run.dir={out / 'export'}"], timings)  # fmt: skip
    run("export-pt2", ["-m", "tpnet.export.cli", f"checkpoint={best}", f"output={model_pt2}", "format=pt2",
                       f"hydra.run.dir={out / 'export'}"], timings)  # fmt: skip
    frames = clinic_folder(best, out / "clinic_frames")
    run("infer", ["-m", "tpnet.inference.cli", "--model", str(model_pt), "--input", str(frames),
                  "--output", str(out / "inference")], timings)  # fmt: skip
    # Real muscle frames the model never saw the like of (DL_Track: no SWE, no pixel size, another scanner):
    # analysed with named warnings and a banner, and refused under --strict (exit 3).
    for name, strict in (("infer-real", []), ("infer-real-strict", ["--strict"])):
        run(name, ["-m", "tpnet.inference.cli", "--model", str(model_pt), "--input", str(REAL_FRAMES),
                   "--output", str(out / name), *strict], timings, ok=(0, 3))  # fmt: skip

    report = json.loads(metrics.read_text())
    ci = report.get("ci95", {})
    summary = {
        "test_det_f1": report.get("det_f1"),
        "test_det_f1_ci95": ci.get("det_f1"),
        "test_det_precision": report.get("det_precision"),
        "test_det_recall": report.get("det_recall"),
        "test_loc_err_mm": report.get("loc_err_mm"),
        "test_dice_mean": report.get("dice_mean"),
        # Critical structures and needle guidance (issue #16): segmentation and detection of nerves and vessels,
        # and the share of planned paths called safe that the true masks show unsafe (goal 0).
        **{
            f"test_{k}": report.get(k)
            for k in (
                "dice/nerve",
                "det_f1/nerve",
                "dice/vessel",
                "det_f1/vessel",
                "guidance/unsafe_called_safe_rate",
                "guidance/safe_share",
                "guidance/no_path_share",
            )
        },
        **{
            f"test_{k}_ci95": ci.get(k)
            for k in ("dice/nerve", "det_f1/nerve", "guidance/unsafe_called_safe_rate")
        },
        # Calibration (issue #14): before (_raw) and after, with CIs, and the noise floor of so few detections.
        **{
            f"test_{k}": report.get(k)
            for k in (
                "detection_ece_raw",
                "detection_ece",
                "detection_ece_floor",
                "detection_brier_raw",
                "detection_brier",
                "frame_ece_raw",
                "frame_ece",
                "pixel_ece_raw",
                "pixel_ece",
                "n_pred_trp",
            )
        },
        "test_detection_ece_ci95": ci.get("detection_ece"),
        "inference_warning_counts": _warning_counts(out / "inference"),
        "real_frames_warning_counts": _warning_counts(out / "infer-real"),
        "real_frames_strict_rejected": _warning_counts(out / "infer-real-strict", "frames_rejected"),
        "seconds": timings,
        "train_plus_eval_s": round(timings["train"] + timings["evaluate"], 1),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    db = resolve_tracking_uri(cfg.logger.tracking_uri)
    print("\n==> done")
    print(json.dumps(summary, indent=2))
    print(f"""
Results
  run folder        {out}
  checkpoints       {out / "train" / "checkpoints"}
  test metrics      {metrics}
  exported models   {model_pt}  and  {model_pt2}
  inference output  {out / "inference"}  (open {out / "inference" / "report.html"} in a browser)
MLflow UI
  .venv/bin/mlflow ui --backend-store-uri {db} --port 5000   then open http://127.0.0.1:5000""")


if __name__ == "__main__":
    main()
