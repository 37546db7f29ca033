"""Shared fixtures. Tests mirror the package: tests/data, tests/models, tests/training, ..."""

from __future__ import annotations

import os

# Two cores here: one intra-op thread per test process keeps parallel subprocesses from thrashing.
os.environ.setdefault("OMP_NUM_THREADS", "1")
