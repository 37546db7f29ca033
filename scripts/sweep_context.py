"""Does 3-D context help? Issue #17's experiment (README, "Sweeps: 3-D ultrasound").

One synthetic sweep set (tpnet.data.synth_sweeps, contract version 2) and one subject split; two runs identical
but for ``data.context_slices``:
  2-D:    each slice alone (the default pipeline)
  2.5-D:  each slice with its 2 neighbours on each side as extra B-mode channels (data.context_slices=2)
Each run's best checkpoint is tested on the same test sweeps: the 3-D detection F1 (TrPs as 26-connected objects
across slices, matched on 3-D centroid distance, subject-bootstrap CIs; metrics.json "sweeps_3d") and the
per-slice 2-D F1 beside it.

    .venv/bin/python scripts/sweep_context.py --out outputs/sweep_context               # the README's figures
    .venv/bin/python scripts/sweep_context.py --out /tmp/sc --subjects 8 --epochs 2     # a smoke run

Writes <out>/sweep_context.json and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from tpnet.data.synth_sweeps import write_sweep_dataset

ROOT = Path(__file__).resolve().parents[1]
RUNS = {"2-D (context_slices=0)": 0, "2.5-D (context_slices=2)": 2}
FIGURES_3D = ("det3d_f1", "det3d_precision", "det3d_recall", "loc3d_err_mm", "volume_rel_err")
FIGURES_2D = ("det_f1", "det_precision", "det_recall")


def train(
    out: Path, data: Path, context: int, epochs: int, samples: int, extra: list[str]
) -> tuple[Path, float]:
    run_dir = out / "runs" / f"context{context}"
    if (run_dir / "metrics.json").exists():
        return run_dir, float("nan")
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=cpu_demo", "data=folder",
        f"data.root={data}", f"data.context_slices={context}", f"trainer.max_epochs={epochs}",
        f"data.samples_per_epoch={samples}", f"hydra.run.dir={run_dir}", "logger=none", *extra,
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=ROOT)
    return run_dir, time.perf_counter() - started


def _cell(block: dict, key: str) -> str:
    value, ci = block.get(key), (block.get("ci95") or {}).get(key)
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if ci and None not in ci:
        text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "sweep_context")
    parser.add_argument("--subjects", type=int, default=60, help="one sweep each")
    parser.add_argument("--slices", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--samples-per-epoch", type=int, default=336, help="patches per epoch (the demo's)")
    parser.add_argument("override", nargs="*", help="extra tpnet-train overrides for both runs")
    args = parser.parse_args()
    out = args.out.resolve()
    data = out / "data"
    if not (data / "manifest.csv").exists():
        write_sweep_dataset(data, subjects=args.subjects, slices=args.slices, seed=args.seed)
    results: dict = {"command": " ".join(sys.argv), "data": str(data), "runs": {}}
    for title, context in RUNS.items():
        run_dir, seconds = train(out, data, context, args.epochs, args.samples_per_epoch, args.override)
        report = json.loads((run_dir / "metrics.json").read_text())
        results["runs"][title] = {
            "run_dir": str(run_dir),
            "train_and_test_s": seconds,
            "sweeps_3d": report.get("sweeps_3d"),
            "per_slice_2d": {k: report.get(k) for k in FIGURES_2D} | {"ci95": report.get("ci95", {})},
        }
    (out / "sweep_context.json").write_text(json.dumps(results, indent=2) + "\n")
    print(
        "\n| run | 3-D F1 | 3-D precision | 3-D recall | 3-D loc. error mm | volume rel. error | per-slice 2-D F1 |"
    )
    print("|---|---|---|---|---|---|---|")
    for title, run in results["runs"].items():
        block = run["sweeps_3d"] or {}
        cells = [_cell(block, k) for k in FIGURES_3D]
        per_slice = {**run["per_slice_2d"], "ci95": run["per_slice_2d"]["ci95"]}
        print(f"| {title} | " + " | ".join(cells) + f" | {_cell(per_slice, 'det_f1')} |")
    first = next(iter(results["runs"].values()))["sweeps_3d"] or {}
    print(f"\ntest: {first.get('n_volumes')} sweeps of {first.get('n_subjects')} subjects, "
          f"{first.get('n_gt_3d')} true trigger points")  # fmt: skip


if __name__ == "__main__":
    main()
