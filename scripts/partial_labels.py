"""The two-source partial-label experiment of issue #16 (README, "Training across datasets with different labels").

One synthetic dataset with every class is cut in two by subject:
  source "trp":    trigger points + vessels labelled, nerves left unlabelled (shown as background)
  source "nerves": nerves + vessels labelled, trigger points left unlabelled
Two runs train on both sources, identical but for ``data.partial_labels``:
  marginal:   a class a source does not label is unknown there (tpnet.training.losses.MarginalLoss)
  background: it is background (the naive way)
Each run is then scored with tpnet-eval against the FULL labels of each source's test subjects: nerves on the
"trp" source's frames (where no nerve was ever labelled) and trigger points on the "nerves" source's frames.

    .venv/bin/python scripts/partial_labels.py --out outputs/partial_labels            # the README's figures
    .venv/bin/python scripts/partial_labels.py --out outputs/partial_labels_scarce --subjects 200 --trp-share 0.25
    .venv/bin/python scripts/partial_labels.py --out /tmp/pl --subjects 12 --epochs 2  # a smoke run

``--trp-share`` is the share of subjects whose trigger points are labelled (the rest label nerves); each source
is sampled in proportion to its subjects, so at 0.25 the naive run is told "background" at three of every four
trigger points it sees, the situation of scarce trigger-point sets beside large regional-anaesthesia sets.

Writes <out>/partial_labels.json and prints the table the README shows.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from tpnet.core.contract import load_spec
from tpnet.core.io import read_mask, write_png
from tpnet.data.synth import write_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]
RUN_CLASSES = ["background", "active_trp", "latent_trp", "vessel", "nerve"]
# source -> the classes it labels (the rest of RUN_CLASSES are unlabelled there)
SOURCES = {
    "trp": ["background", "active_trp", "latent_trp", "vessel"],
    "nerves": ["background", "vessel", "nerve"],
}
# (source whose frames are scored, the figure that measures the class that source never labelled)
SCORES = {
    "nerve on trp-source frames": ("trp", ["dice/nerve", "det_f1/nerve"]),
    "TrP on nerves-source frames": ("nerves", ["det_f1", "dice/active_trp", "dice/latent_trp"]),
}


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def write_source(full: Path, out: Path, subjects: set[str], labelled: list[str] | None) -> Path:
    """The rows of ``subjects`` from ``full``; masks relabelled to ``labelled`` (None: every class kept)."""
    spec = load_spec(full)
    classes = labelled or list(spec.classes)
    lut = np.zeros(256, np.uint8)
    for index, name in enumerate(spec.classes):
        lut[index] = classes.index(name) if name in classes else 0
    with open(full / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["subject_id"] in subjects]
    for row in rows:
        _link_or_copy(full / row["bmode"], out / row["bmode"])
        if row.get("elasto"):
            _link_or_copy(full / row["elasto"], out / row["elasto"])
        write_png(out / row["mask"], lut[read_mask(full / row["mask"])])
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = yaml.safe_load((full / "dataset.yaml").read_text())
    meta.update(name=out.name, classes=classes)
    (out / "dataset.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return out


def split_subjects(ids: list[str], trp_share: float) -> dict[str, set[str]]:
    """Sorted subject ids dealt to the two sources, interleaved so both see the whole id range."""
    trp = {s for i, s in enumerate(ids) if math.floor(i * trp_share) > math.floor((i - 1) * trp_share)}
    return {"trp": trp, "nerves": set(ids) - trp}


def make_datasets(
    out: Path, subjects: int, frames: int, seed: int, size: int, trp_share: float
) -> tuple[dict[str, Path], dict[str, int]]:
    full = out / "data" / "full"
    if not (full / "manifest.csv").exists():
        write_synthetic_dataset(full, subjects, frames, seed, size, size)
    missing = [c for c in RUN_CLASSES if c not in load_spec(full).classes]
    if missing:
        raise SystemExit(f"{full}: the synthetic data lack {missing}; this experiment needs them")
    with open(full / "manifest.csv", newline="") as f:
        ids = sorted({r["subject_id"] for r in csv.DictReader(f)})
    halves = split_subjects(ids, trp_share)
    roots = {}
    for name, labelled in SOURCES.items():
        roots[name] = out / "data" / name
        roots[f"{name}_full"] = out / "data" / f"{name}_full"
        if not (roots[name] / "manifest.csv").exists():
            write_source(full, roots[name], halves[name], labelled)
            write_source(full, roots[f"{name}_full"], halves[name], None)
    return roots, {name: len(members) for name, members in halves.items()}


def train(
    out: Path, roots: dict[str, Path], weights: dict[str, int], mode: str, epochs: int, extra: list[str]
) -> Path:
    run_dir = out / "runs" / mode
    best = run_dir / "checkpoints" / "best.pt"
    if best.exists():
        return best
    sources = ",".join(f"{{root: '{roots[n]}', name: {n}, weight: {weights[n]}}}" for n in SOURCES)
    command = [
        sys.executable, str(ROOT / "scripts" / "train.py"), "experiment=cpu_demo",
        f"data.sources=[{sources}]", f"data.partial_labels={mode}", f"trainer.max_epochs={epochs}",
        "trainer.monitor=val/det_f1", f"hydra.run.dir={run_dir}", "logger=none", *extra,
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return best


def score(out: Path, checkpoint: Path, root: Path, name: str) -> dict:
    output = out / "eval" / f"{checkpoint.parents[1].name}_{name}.json"
    command = [
        sys.executable, str(ROOT / "scripts" / "eval.py"), f"checkpoint={checkpoint}", f"data.root={root}",
        "split=test", f"output={output}", "log_to_mlflow=false", "evaluation.n_boot=1000",
    ]  # fmt: skip
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)
    return json.loads(output.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "partial_labels")
    parser.add_argument(
        "--subjects", type=int, default=120, help="of the full dataset, halved between sources"
    )
    parser.add_argument(
        "--trp-share", type=float, default=0.5, help="share of subjects in the source labelling TrPs"
    )
    parser.add_argument("--frames", type=int, default=4, help="per subject")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("override", nargs="*", help="extra tpnet-train overrides for both runs")
    args = parser.parse_args()
    out = args.out.resolve()
    if not 0 < args.trp_share < 1:
        parser.error("--trp-share must lie strictly between 0 and 1")
    roots, weights = make_datasets(out, args.subjects, args.frames, args.seed, args.size, args.trp_share)
    results: dict = {"command": " ".join(sys.argv), "source_subjects": weights, "runs": {}}
    for mode in ("marginal", "background"):
        checkpoint = train(out, roots, weights, mode, args.epochs, args.override)
        run = {}
        for title, (source, keys) in SCORES.items():
            report = score(out, checkpoint, roots[f"{source}_full"], source)
            run[title] = {k: {"value": report.get(k), "ci95": report.get("ci95", {}).get(k)} for k in keys}
            run[title]["n_subjects"] = report.get("n_subjects")
        results["runs"][mode] = run
    (out / "partial_labels.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n| scored on | metric | partial labels: marginal | missing = background |\n|---|---|---|---|")
    for title, (_, keys) in SCORES.items():
        for key in keys:
            cells = []
            for mode in ("marginal", "background"):
                entry = results["runs"][mode][title][key]
                value, ci = entry["value"], entry["ci95"]
                text = "n/a" if value is None else f"{value:.3f}"
                if ci and None not in ci:
                    text += f" ({ci[0]:.3f}-{ci[1]:.3f})"
                cells.append(text)
            print(f"| {title} | {key} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
