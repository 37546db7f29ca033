"""Reliability diagrams (issue #14): per level (pixel, TrP pixel, detection, frame) the observed frequency against
the stated confidence, before and after calibration, from a report's ``reliability`` curves
(``tpnet.evaluation.calibration_metrics``). A calibrated model lies on the diagonal."""

from __future__ import annotations

import math
import os
from pathlib import Path

from tpnet.evaluation.calibration_metrics import LEVELS

TITLES = {
    "pixel": "pixels (top class)",
    "trp_pixel": "pixels (TrP vs not)",
    "detection": "detections (true TrP?)",
    "frame": "frames (contains a TrP?)",
}
STYLE = {"raw": ("#c0392b", "before"), "calibrated": ("#1f6fb5", "after")}


def draw_reliability(report: dict, path: str | Path, subtitle: str) -> Path:
    """One row of panels into ``path`` (PNG, replaced atomically); the legend gives each curve's ECE."""
    from matplotlib.figure import Figure  # matplotlib (tpnet[train]) only where a plot is drawn

    curves = report["reliability"]
    figure = Figure(figsize=(4.0 * len(LEVELS), 4.2), dpi=100)
    axes = figure.subplots(1, len(LEVELS))
    for ax, level in zip(axes, LEVELS, strict=True):
        ax.plot([0, 1], [0, 1], color="#888", linewidth=1, linestyle="--")
        for stage, (colour, word) in STYLE.items():
            curve = curves[level][stage]
            points = [
                (c, f, n)
                for c, f, n in zip(curve["confidence"], curve["frequency"], curve["count"], strict=True)
                if n and c is not None and f is not None and not (math.isnan(c) or math.isnan(f))
            ]
            ece = report.get(f"{level}_ece" + ("_raw" if stage == "raw" else ""))
            label = f"{word}: ECE " + ("n/a" if ece is None or ece != ece else f"{ece:.3f}")
            if points:
                xs, ys, _ = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o", markersize=4, color=colour, label=label)
            else:
                ax.plot([], [], color=colour, label=label + " (nothing to show)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_title(TITLES[level], fontsize=11)
        ax.set_xlabel("stated confidence")
        ax.legend(loc="upper left", fontsize=9)
    axes[0].set_ylabel("observed frequency")
    figure.suptitle(f"Reliability, {subtitle} ({report.get('n_frames', '?')} frames)", fontsize=12)
    figure.tight_layout()
    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(partial, format="png")
    os.replace(partial, path)
    return path
