"""``progress.png``: the run's curves in one small figure, redrawn after validation epochs (as nnU-Net's
``progress.png``): train and validation loss, the validation metrics (mean foreground Dice, TrP detection F1) with
the best epoch marked, and the learning rate and epoch time.

Drawn from ``metrics.jsonl`` (one row per epoch, null where a metric was undefined or not computed), with
matplotlib's Agg canvas: no display, no pyplot state. A figure costs 0.2-0.7 s of CPU (tick layout, mostly):
nothing next to a real epoch, but more than a test's whole epoch, so ``RedrawClock`` redraws at most every
``MIN_REDRAW_INTERVAL_S`` and the end of the run draws the final figure.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

METRIC_CURVES = (
    ("val/dice_mean", "val Dice (mean fg)", "tab:green"),
    ("val/det_f1", "val TrP F1", "tab:purple"),
)
FIGURE_SIZE_IN = (8.0, 6.0)
DPI = 100
MIN_REDRAW_INTERVAL_S = 10.0


class RedrawClock:
    """``due()`` is True once ``min_interval_s`` has passed since the clock started or last said so."""

    def __init__(self, min_interval_s: float = MIN_REDRAW_INTERVAL_S) -> None:
        self.min_interval_s = min_interval_s
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.min_interval_s:
            return False
        self.last = now
        return True


def read_history(path: Path) -> list[dict]:
    """The rows of a metrics.jsonl (missing file: none)."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def best_row(history: Sequence[dict], monitor: str, mode: str) -> dict | None:
    """The first epoch with the best finite ``monitor`` value (the epoch best.pt holds), or None."""
    rows = [row for row in history if _finite(row.get(monitor))]
    if not rows:
        return None
    pick = max if mode == "max" else min
    return pick(rows, key=lambda row: row[monitor])  # max/min keep the first of equal values


def write_progress_plot(
    history: Sequence[dict], path: Path, monitor: str, mode: str, title: str = ""
) -> Path:
    """Draw ``history`` (metrics.jsonl rows) into ``path`` (PNG, replaced atomically), the best epoch by
    ``monitor`` (``mode`` min or max) marked; returns ``path``."""
    from matplotlib.figure import Figure  # matplotlib (tpnet[train]) only where a plot is drawn

    figure = Figure(figsize=FIGURE_SIZE_IN, dpi=DPI)
    # Fixed margins: a constrained layout costs more than the drawing itself.
    figure.subplots_adjust(left=0.1, right=0.9, top=0.86, bottom=0.09, hspace=0.12)
    losses, schedule = figure.subplots(2, 1, sharex=True, height_ratios=(2.2, 1))
    figure.suptitle(title, x=0.1, y=0.985, ha="left", fontsize=9)

    # top: losses (left axis), validation metrics in [0, 1] (right axis), the best epoch
    _curve(losses, history, "train/loss", "train loss", "tab:blue", marker=None)
    _curve(losses, history, "val/loss", "val loss", "tab:red")
    losses.set_ylabel("loss")
    losses.grid(alpha=0.3)
    metrics = losses.twinx()
    curves = [*METRIC_CURVES]
    if monitor not in (key for key, _, _ in curves) and monitor.startswith("val/") and "loss" not in monitor:
        curves.append((monitor, monitor, "tab:orange"))
    for key, label, colour in curves:
        _curve(metrics, history, key, label, colour, linestyle="--")
    metrics.set_ylim(0, 1.02)
    metrics.set_ylabel("validation metric")
    best = best_row(history, monitor, mode)
    if best is not None:
        losses.axvline(best["epoch"], color="0.35", linewidth=1, linestyle=":",
                       label=f"best: epoch {best['epoch']}, {monitor} {best[monitor]:.4g}")  # fmt: skip
    handles = [h for ax in (losses, metrics) for h in ax.get_legend_handles_labels()[0]]
    if handles:  # above the axes, where no curve runs
        losses.legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8,
                      frameon=False, borderaxespad=0.3)  # fmt: skip

    # bottom: learning rate (left), epoch time (right); axis labels in the curves' colours instead of a legend
    _curve(schedule, history, "lr", "learning rate", "tab:gray", marker=None)
    schedule.set_ylabel("learning rate", color="tab:gray")
    schedule.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    schedule.grid(alpha=0.3)
    seconds = schedule.twinx()
    _curve(seconds, history, "throughput/epoch_s", "epoch time (s)", "tab:brown", marker=None, linestyle=":")
    seconds.set_ylabel("epoch time (s)", color="tab:brown")
    seconds.set_ylim(bottom=0)
    schedule.set_xlabel("epoch")
    epochs = [row["epoch"] for row in history]
    if epochs:
        schedule.set_xlim(0.5, max(epochs) + 0.5)
        schedule.xaxis.get_major_locator().set_params(integer=True)

    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    figure.savefig(partial, format="png")
    os.replace(partial, path)  # a viewer or an MLflow upload never reads a half-written file
    return path


def _curve(ax, history: Sequence[dict], key: str, label: str, colour: str, marker: str | None = "o",
           linestyle: str = "-") -> None:  # fmt: skip
    """Plot the epochs where ``key`` has a finite value (validation every n epochs, NaN = undefined)."""
    points = [(row["epoch"], row[key]) for row in history if _finite(row.get(key))]
    if points:
        xs, ys = zip(*points, strict=True)
        ax.plot(
            xs, ys, label=label, color=colour, marker=marker, markersize=3, linestyle=linestyle, linewidth=1.4
        )


def _finite(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
