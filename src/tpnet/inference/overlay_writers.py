"""Overlays drawn and written by a pool of processes, so a GPU run is not held to one core by the GIL.

Drawing an overlay (colour blending, legend, rulers) and compressing its PNG are most of tpnet-infer's host-side
work per frame (docs/benchmarks.md, "tpnet-infer host-side cost"); in the predictor's worker threads they run
one at a time wherever NumPy or OpenCV hold the GIL. ``OverlayWriters(n)`` hands each frame's overlay to one of
``n`` processes instead; the calling thread waits for its own frame, so at most one overlay per worker thread is
in flight (memory stays bounded) and a frame counts as written only when its file is on disk. ``n = 0`` draws
in the calling thread, as before. The processes are started by a fork server (not forked from this process,
whose reader threads may hold locks) and import only NumPy and OpenCV: no torch.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import numpy as np

from tpnet.core.io import write_png
from tpnet.core.overlay import render_overlay


def default_overlay_processes(cores: int | None = None) -> int:
    """The default pool size: none on a small machine (the network needs its cores), about half the cores
    beyond four on a large one (a GPU box: the network runs on the device), at most 8."""
    cores = cores or os.cpu_count() or 1
    return max(0, min(8, (cores - 4) // 2))


def draw_and_write(path: Path, **overlay_args: Any) -> None:
    """One overlay: drawn and written as a PNG at ``path``."""
    write_png(path, render_overlay(**overlay_args))


class OverlayWriters:
    """``write(path, **render_overlay arguments)``: draws and writes one overlay, in a pool process when there
    is one; thread-safe. If the pool breaks (a process killed), the remaining overlays are drawn in-thread."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        if processes > 0:
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("forkserver"))

    def write(self, path: Path, **overlay_args: Any) -> None:
        pool = self._pool
        if pool is not None:
            try:
                pool.submit(draw_and_write, path, **_compact(overlay_args)).result()
                return
            except BrokenProcessPool:
                with self._lock:
                    self._pool = None  # a pool process died: the rest of the run draws in-thread
        draw_and_write(path, **overlay_args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> OverlayWriters:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compact(args: dict[str, Any]) -> dict[str, Any]:
    """Arrays sent to a process as they are (contiguous: pickled without a copy per element)."""
    return {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
