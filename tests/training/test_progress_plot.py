"""progress.png from a metrics.jsonl history (validation every other epoch, undefined metrics null): drawn, atomic,
the best epoch found as best.pt's. The real run's plot is checked in test_readable_runs.py."""

from __future__ import annotations

import json

import cv2

from tpnet.training.progress_plot import RedrawClock, best_row, read_history, write_progress_plot


def _history(epochs: int = 6) -> list[dict]:
    rows = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "train/loss": 2.0 / epoch, "lr": 1e-3 * (1 - epoch / (epochs + 1)),
               "throughput/epoch_s": 10.0 + epoch % 2}  # fmt: skip
        if epoch % 2 == 0:  # trainer.val_every_n_epochs=2
            row.update(
                {
                    "val/loss": 1.5 / epoch,
                    "val/dice_mean": [0.2, 0.6, 0.6][epoch // 2 - 1],
                    "val/det_f1": None,
                }
            )
        rows.append(row)
    return rows


def test_plot_is_drawn_from_the_history_and_replaced_atomically(tmp_path):
    path = tmp_path / "run" / "progress.png"
    path.parent.mkdir()
    (path.parent / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _history()))
    history = read_history(path.parent / "metrics.jsonl")
    assert write_progress_plot(history, path, "val/dice_mean", "max", "default-unet-abc123") == path
    image = cv2.imread(str(path))
    assert image.shape == (600, 800, 3)
    # Curves in their colours: the train loss (tab:blue) and the Dice (tab:green) are drawn.
    for bgr in ((180, 119, 31), (44, 160, 44)):
        assert (abs(image.astype(int) - bgr).sum(axis=2) < 40).sum() > 200, bgr
    assert sorted(p.name for p in path.parent.iterdir()) == ["metrics.jsonl", "progress.png"]  # no temp file
    write_progress_plot([], path, "val/det_f1", "max")  # no epoch yet: an empty figure, no error


def test_best_row_is_the_first_epoch_with_the_best_value():
    history = _history()
    assert (
        best_row(history, "val/dice_mean", "max")["epoch"] == 4
    )  # 0.6 at epochs 4 and 6: the first, as best.pt
    assert best_row(history, "train/loss", "min")["epoch"] == 6
    assert best_row(history, "val/det_f1", "max") is None  # undefined every epoch


def test_redraw_clock_waits_its_interval():
    clock = RedrawClock(min_interval_s=3600)
    assert not clock.due()
    assert RedrawClock(min_interval_s=0).due()
