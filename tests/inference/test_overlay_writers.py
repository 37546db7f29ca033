"""``--overlay-processes N``: overlays drawn and written by a pool of processes are the files the worker threads
write, a pool process that dies costs no frame (the rest are drawn in-thread), and the default leaves a small
machine's cores to the network."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from model_files import blob_frame, make_model_file, separable
from tpnet.core.io import write_png, write_tiff
from tpnet.inference.cli import main
from tpnet.inference.overlay_writers import OverlayWriters, default_overlay_processes


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return make_model_file(tmp_path_factory.mktemp("model"), edit_meta=separable)


def test_overlays_from_the_process_pool_are_the_files_the_threads_write(tmp_path, model_path):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    bmode, kpa = blob_frame((6.4, 6.4), 0.2, nodules=[(3.0, 3.0, 1.2)], swe_box_mm=(0.0, 0.0, 6.4, 6.4))
    for stem in ("a", "b", "c"):
        write_png(in_dir / f"{stem}_bmode.png", np.round(bmode * 255).astype(np.uint8))
        if stem != "c":  # one frame without SWE: no colour layer
            write_tiff(in_dir / f"{stem}_elasto.tif", kpa)
    base = ["--model", str(model_path), "--input", str(in_dir), "--spacing-mm", "0.2"]
    assert main([*base, "--output", str(tmp_path / "threads"), "--overlay-processes", "0"]) == 0
    assert main([*base, "--output", str(tmp_path / "pool"), "--overlay-processes", "2"]) == 0
    for stem in ("a", "b", "c"):
        threads = (tmp_path / "threads" / "overlays" / f"{stem}.png").read_bytes()
        assert (tmp_path / "pool" / "overlays" / f"{stem}.png").read_bytes() == threads, stem
    assert (tmp_path / "pool" / "detections.csv").read_text() == (tmp_path / "threads" / "detections.csv").read_text()


def test_a_dead_pool_process_costs_no_overlay(tmp_path):
    bmode = np.linspace(0.0, 1.0, 40 * 50, dtype=np.float32).reshape(40, 50)
    labels = np.zeros((40, 50), np.uint8)
    args = dict(bmode=bmode, label_map=labels, classes=["background", "active_trp"], trigger_points=[])
    with OverlayWriters(1) as writers:
        writers.write(tmp_path / "first.png", **args)
        for pid in list(writers._pool._processes):  # the pool's one process, killed between two frames
            os.kill(pid, signal.SIGKILL)
        writers.write(tmp_path / "second.png", **args)
        writers.write(tmp_path / "third.png", **args)
    for name in ("first", "second", "third"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0, name


def test_the_default_pool_leaves_a_small_machine_to_the_network():
    assert [default_overlay_processes(c) for c in (1, 2, 4, 8, 16, 64)] == [0, 0, 0, 2, 6, 8]
