"""Active vs latent effect-size sweep (issue #14): how large must the difference between active and latent trigger
points be before a model can tell them apart?

    .venv/bin/python scripts/active_latent_sweep.py                       # ~13 min on 2 CPU cores
    .venv/bin/python scripts/active_latent_sweep.py --factors 1,2 --echo-db 3,6 --out /tmp/sweep
    .venv/bin/python scripts/active_latent_sweep.py --quick --out /tmp/q   # tiny: a test, not a figure

For each effect size, ``tpnet-train`` (the real command-line tool, as a user runs it) generates the synthetic
data set with that effect (``data.synthetic.active_stiffness_factor=F`` or ``data.synthetic.active_echo_db=DB``,
docs/synthetic-data.md, "Active vs latent"), trains a small U-Net on it and scores the test split. Every run uses
the same seed, so the data sets differ only in the active trigger points: same subjects, frames, anatomy, labels.
What is read back is the test split's ``class_acc`` (the share of matched detections given the right one of
active/latent; 0.5 is chance) and its 95 % subject-bootstrap interval (``ci95``) from the run's metrics.json.

Outputs: one JSON line per effect size (--jsonl; docs/benchmarks/active_latent_sweep.jsonl by default, with the
command, seed, settings and machine), the plot (--plot; docs/img/active_latent_sweep.png), and under --out the
run folders (runs/), the data cache (cache/), the tools' logs (logs/) and MLflow's store (mlflow.db).
With --quick both default to --out instead, so a test never overwrites the published figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DEFAULT_JSONL = REPO / "docs" / "benchmarks" / "active_latent_sweep.jsonl"
DEFAULT_PLOT = REPO / "docs" / "img" / "active_latent_sweep.png"
CHANCE = 0.5

# The sweep's training recipe: cpu_demo's fixed 0.2 mm/px and 96 px patches (no planning, so every effect size
# trains the same network), a narrower, shallower U-Net and 16 steps an epoch so that one run takes ~3 min on two
# CPU cores. 30 % of the subjects are the test split: ~18 subjects, ~45 true TrPs at the default settings.
RECIPE = [
    "trainer=cpu",
    "data.spacing_mm=0.2",
    "data.patch_size=[96,96]",
    "data.batch_size=16",
    "data.samples_per_epoch=256",
    "data.bmode_norm=none",
    "data.num_workers=0",
    "data.test_fraction=0.3",
    "model.base_width=8",
    "model.depth=3",
    "trainer.val_every_n_epochs=10",
    "logger.overlay_every_n_epochs=0",
    "logger.progress_plot=false",
    "logger.log_checkpoint=false",
    "evaluation.n_boot=500",
]
# --quick: the test suite's tiny recipe (tests/train_helpers.py), seconds per run; learns nothing worth a figure.
# No MLflow store (its first-use migrations alone take ~10 s); the full sweep logs to <out>/mlflow.db.
QUICK = [
    "logger=none",
    "trainer=cpu",
    "data.spacing_mm=0.2",
    "data.patch_size=[32,32]",
    "data.batch_size=4",
    "data.num_workers=0",
    "model.base_width=4",
    "model.depth=2",
    "logger.overlay_every_n_epochs=0",
    "logger.progress_plot=false",
    "logger.log_checkpoint=false",
    "evaluation.n_boot=20",
]
QUICK_SIZES = {"epochs": 1, "subjects": 6, "frames_per_subject": 3, "size": 96}


@dataclass(frozen=True)
class Effect:
    """One point of the sweep: which parameter is swept ("stiffness" or "echo") and both values."""

    series: str
    active_stiffness_factor: float
    active_echo_db: float

    @property
    def size(self) -> float:
        return self.active_stiffness_factor if self.series == "stiffness" else self.active_echo_db

    @property
    def name(self) -> str:
        return f"stiffness{self.active_stiffness_factor:g}x_echo{self.active_echo_db:g}db"


def effects(factors: list[float], echo_dbs: list[float]) -> list[Effect]:
    """The stiffness series (no echo difference), then the echo series (no stiffness difference)."""
    return [Effect("stiffness", f, 0.0) for f in factors] + [Effect("echo", 1.0, db) for db in echo_dbs]


def train_command(effect: Effect, args: argparse.Namespace, run_dir: Path) -> list[str]:
    out = args.out.resolve()
    overrides = [
        *(QUICK if args.quick else RECIPE),
        f"data.synthetic.cache_dir={out / 'cache'}",
        f"data.synthetic.subjects={args.subjects}",
        f"data.synthetic.frames_per_subject={args.frames_per_subject}",
        f"data.synthetic.height={args.size}",
        f"data.synthetic.width={args.size}",
        f"data.synthetic.seed={args.seed}",
        f"data.synthetic.active_stiffness_factor={effect.active_stiffness_factor!r}",
        f"data.synthetic.active_echo_db={effect.active_echo_db!r}",
        f"trainer.max_epochs={args.epochs}",
        f"seed={args.seed}",
        *(
            []
            if args.quick
            else [
                f"logger.tracking_uri=sqlite:///{out / 'mlflow.db'}",
                "logger.experiment_name=active_latent_sweep",
                f"logger.run_name={effect.name}",
            ]
        ),
        f"hydra.run.dir={run_dir.resolve()}",
    ]
    script = Path(sys.executable).parent / "tpnet-train"
    launcher = [str(script)] if script.exists() else [sys.executable, "-m", "tpnet.training.cli"]
    return launcher + overrides


def run_one(effect: Effect, args: argparse.Namespace, reuse: bool = False) -> dict[str, Any]:
    """Train and test at one effect size (or read a finished run back: ``reuse``, --skip-existing); its row."""
    run_dir = args.out / "runs" / effect.name
    command = train_command(effect, args, run_dir)
    metrics_file = run_dir / "metrics.json"
    wall_file = run_dir / "sweep_wall_s.json"
    finished = metrics_file.exists() and wall_file.exists()
    # A finished run is reused only if it was trained by the same command (same effect, recipe and sizes).
    if not (
        (reuse or args.skip_existing)
        and finished
        and json.loads(wall_file.read_text()).get("command") == shlex.join(command)
    ):
        if run_dir.exists():
            shutil.rmtree(run_dir)  # tpnet-train refuses a folder that holds a started run
        log = args.out / "logs" / f"{effect.name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"$ {shlex.join(command)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with log.open("w") as sink:
            done = subprocess.run(command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0:
            tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-30:])
            raise SystemExit(f"active_latent_sweep: tpnet-train exit {done.returncode} (log {log}):\n{tail}")
        wall_s = round(time.perf_counter() - start, 1)
        wall_file.write_text(json.dumps({"wall_s": wall_s, "command": shlex.join(command)}) + "\n")
    report = json.loads(metrics_file.read_text())
    n_active, n_latent = test_split_trp_mix(run_dir)
    if n_active + n_latent != report.get("n_gt_trp", 0):  # the split above no longer matches tpnet-train's
        raise SystemExit(
            f"active_latent_sweep: counted {n_active}+{n_latent} true TrPs in the test split, metrics.json says "
            f"{report.get('n_gt_trp')} ({run_dir}): test_split_trp_mix needs updating"
        )
    ci = report.get("ci95", {}).get("class_acc")
    recall, n_true = report.get("det_recall"), report.get("n_gt_trp", 0)
    return {
        "series": effect.series,
        "effect_size": effect.size,
        "active_stiffness_factor": effect.active_stiffness_factor,
        "active_echo_db": effect.active_echo_db,
        "class_acc": report.get("class_acc"),  # null: no detection matched a true TrP
        "class_acc_ci95": ci,
        "class_acc_undefined": report.get("undefined", {}).get("class_acc"),
        # class_acc's denominator: the matched detections (recall x true TrPs)
        "n_matched": None if recall is None else round(recall * n_true),
        # both near 0 but one: the model calls every TrP one class (class_acc = that class's share)
        "dice_active_trp": report.get("dice/active_trp"),
        "dice_latent_trp": report.get("dice/latent_trp"),
        "det_f1": report.get("det_f1"),
        "det_f1_ci95": report.get("ci95", {}).get("det_f1"),
        "n_gt_trp": n_true,
        "n_gt_active": n_active,
        "n_gt_latent": n_latent,
        "n_test_subjects": report.get("n_subjects"),
        "n_test_frames": report.get("n_frames"),
        "train_wall_s": json.loads(wall_file.read_text())["wall_s"],
        "run_dir": str(run_dir),
        "train_command": shlex.join(command),
    }


def test_split_trp_mix(run_dir: Path) -> tuple[int, int]:
    """(active, latent) true trigger points in the run's test split, counted in its masks. A model that ignores
    the difference and calls every TrP one class scores that class's share, not 0.5. The split is made as
    tpnet-train makes it for these runs (no cross-validation): the run's resolved config.yaml names the cached
    data set, the seed and the fractions; torch-free, so it costs no second of the quick test."""
    import cv2
    import numpy as np
    from omegaconf import OmegaConf

    from tpnet.core.contract import load_manifest, resolve_path
    from tpnet.core.io import read_mask
    from tpnet.data.splits import split_rows
    from tpnet.data.synth import ACTIVE_TRP, LATENT_TRP, synthetic_dataset_name

    cfg = OmegaConf.load(run_dir / "config.yaml")
    s = cfg.data.synthetic
    root = Path(s.cache_dir) / synthetic_dataset_name(
        s.subjects, s.frames_per_subject, s.seed, s.height, s.width, s.appearance,
        s.active_stiffness_factor, s.active_echo_db,
    )  # fmt: skip
    labelled = [row for row in load_manifest(root) if row.mask]
    test = split_rows(labelled, int(cfg.seed), cfg.data.val_fraction, cfg.data.test_fraction)["test"]
    counts = {ACTIVE_TRP: 0, LATENT_TRP: 0}
    for row in test:
        mask = read_mask(resolve_path(root, row.mask))
        for label in counts:
            n_components, _ = cv2.connectedComponents((mask == label).astype(np.uint8), connectivity=8)
            counts[label] += n_components - 1  # minus the background component
    return counts[ACTIVE_TRP], counts[LATENT_TRP]


def _plottable(row: dict[str, Any]) -> bool:
    value = row["class_acc"]
    return value is not None and math.isfinite(value)


def plot(rows: list[dict[str, Any]], path: Path, caption: str) -> None:
    """Accuracy with its 95 % interval against the effect size, one panel per swept parameter, chance marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [s for s in ("stiffness", "echo") if any(r["series"] == s for r in rows)]
    fig, axes = plt.subplots(1, len(series), figsize=(5.2 * len(series), 4.2), squeeze=False)
    labels = {
        "stiffness": "active TrPs' stiffness ratio x F (active_stiffness_factor)",
        "echo": "active TrPs darker by (active_echo_db, dB)",
    }
    for ax, name in zip(axes[0], series, strict=True):
        points = [r for r in rows if r["series"] == name]
        shown = [r for r in points if _plottable(r)]
        xs = [r["effect_size"] for r in shown]
        ys = [r["class_acc"] for r in shown]
        lows = [y - (r["class_acc_ci95"] or [y, y])[0] for r, y in zip(shown, ys, strict=True)]
        highs = [(r["class_acc_ci95"] or [y, y])[1] - y for r, y in zip(shown, ys, strict=True)]
        ax.errorbar(
            xs, ys, yerr=[lows, highs], fmt="o-", capsize=4, color="tab:blue", label="test class_acc, 95 % CI"
        )
        for r in shown:
            ax.annotate(f"n={r['n_matched']}", (r["effect_size"], r["class_acc"]), textcoords="offset points",
                        xytext=(6, -12), fontsize=8, color="0.35")  # fmt: skip
        for r in points:
            if not _plottable(r):  # no matched detection: nothing to score, say so on the axis
                ax.annotate("no match", (r["effect_size"], CHANCE), ha="center", fontsize=8, color="tab:red")
        ax.axhline(CHANCE, color="0.4", linestyle="--", linewidth=1, label="chance (0.5)")
        mix = [(r["n_gt_active"], r["n_gt_latent"]) for r in points if r["n_gt_active"] + r["n_gt_latent"]]
        if mix:  # the same test split for every effect size (one seed): its class mix, the one-class guesses
            active_share = mix[0][0] / sum(mix[0])
            for share in sorted({active_share, 1.0 - active_share}):
                ax.axhline(share, color="tab:orange", linestyle=":", linewidth=1)
            ax.plot([], [], color="tab:orange", linestyle=":", linewidth=1,
                    label=f"all called one class ({active_share:.2f} / {1 - active_share:.2f})")  # fmt: skip
        default = 1.0 if name == "stiffness" else 0.0
        ax.axvline(default, color="tab:green", linestyle=":", linewidth=1, label="default (literature: none)")
        ticks = sorted({r["effect_size"] for r in points} | {default})
        pad = 0.12 * max(ticks[-1] - ticks[0], 1.0)
        ax.set_xticks(ticks)
        ax.set_xlim(ticks[0] - pad, ticks[-1] + pad)
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel(labels[name])
        ax.set_ylabel("active/latent accuracy of matched detections")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle("Can a model tell active from latent trigger points? (synthetic, test split)", fontsize=11)
    fig.text(0.5, 0.005, caption, ha="center", fontsize=7, color="0.3", wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floats(text: str) -> list[float]:
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--factors", type=_floats, default=[1.0, 1.5, 2.0, 3.0],
                        help="active_stiffness_factor values (comma-separated; default 1,1.5,2,3)")  # fmt: skip
    parser.add_argument("--echo-db", type=_floats, default=[],
                        help="active_echo_db values, each at stiffness factor 1 (comma-separated; default none)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--subjects", type=int, default=60)
    parser.add_argument("--frames-per-subject", type=int, default=4)
    parser.add_argument("--size", type=int, default=192, help="synthetic frame size in px (~0.1 mm/px)")
    parser.add_argument("--seed", type=int, default=0, help="data and training seed, the same for every run")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "active_latent_sweep")
    parser.add_argument("--jsonl", type=Path, default=None, help=f"default {DEFAULT_JSONL.relative_to(REPO)}")
    parser.add_argument("--plot", type=Path, default=None, help=f"default {DEFAULT_PLOT.relative_to(REPO)}")
    parser.add_argument(
        "--skip-existing", action="store_true", help="read finished runs back, train the rest"
    )
    parser.add_argument("--quick", action="store_true",
                        help="tiny data and network, 1 epoch (a test of the plumbing; outputs under --out)")  # fmt: skip
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    cli_args = list(argv if argv is not None else sys.argv[1:])
    args = parser.parse_args(cli_args)
    if args.quick:  # the tiny sizes, unless given explicitly
        for key, value in QUICK_SIZES.items():
            option = f"--{key.replace('_', '-')}"
            if not any(a == option or a.startswith(option + "=") for a in cli_args):
                setattr(args, key, value)
    sweep = effects(args.factors, args.echo_db)
    if not sweep:
        parser.error("nothing to sweep: give --factors and/or --echo-db")
    if len({(e.series, e.size) for e in sweep}) != len(sweep):
        parser.error("an effect size is listed twice")
    jsonl = args.jsonl or (args.out / "active_latent_sweep.jsonl" if args.quick else DEFAULT_JSONL)
    png = args.plot or (args.out / "active_latent_sweep.png" if args.quick else DEFAULT_PLOT)
    args.out.mkdir(parents=True, exist_ok=True)

    # The command that reproduces the rows: --skip-existing only saves time, so it is not part of it.
    reproducing = [a for a in cli_args if a != "--skip-existing"]
    command = shlex.join(["python", "scripts/active_latent_sweep.py", *reproducing])
    settings = {
        "epochs": args.epochs, "subjects": args.subjects, "frames_per_subject": args.frames_per_subject,
        "size_px": args.size, "appearance": "literature", "recipe": QUICK if args.quick else RECIPE,
    }  # fmt: skip
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}"
    started = time.strftime("%Y-%m-%d")
    rows, trained = [], set()
    for effect in sweep:  # factor 1 and 0 dB are the same run (no effect): trained once, a row in each series
        row = run_one(effect, args, reuse=effect.name in trained)
        trained.add(effect.name)
        row.update(command=command, seed=args.seed, settings=settings, machine=machine, date=started)
        rows.append(row)
        shown = "null" if not _plottable(row) else f"{row['class_acc']:.3f} {row['class_acc_ci95']}"
        print(f"{effect.name}: class_acc {shown}, n_matched {row['n_matched']}, {row['train_wall_s']} s",
              file=sys.stderr, flush=True)  # fmt: skip

    jsonl.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))
    caption = (f"{command}  |  seed {args.seed}, {args.subjects} subjects x {args.frames_per_subject} frames, "
               f"{args.size} px, {args.epochs} epochs, U-Net; n = matched detections  |  {machine}")  # fmt: skip
    plot(rows, png, caption)
    print(f"wrote {jsonl} and {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
