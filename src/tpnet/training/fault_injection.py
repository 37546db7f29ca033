"""Test-only fault injection, inert unless its environment variable is set.

The fault-tolerance tests (tests/training/test_faults.py, test_ddp.py) must SIGKILL a run at known moments;
these hooks make those moments wide enough to hit. Nothing here runs in normal use.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)


def stall(phase: str, epoch: int) -> None:
    """``TPNET_TEST_STALL=<phase>:<epoch>[:<seconds>]`` (phase ``train`` = mid-epoch, ``validate``): on reaching
    that point, touch ``$TPNET_TEST_STALL_FILE`` and sleep (default 300 s) so a test can kill the process (or
    stop the MLflow server) there."""
    spec = os.environ.get("TPNET_TEST_STALL", "").split(":")
    if len(spec) >= 2 and spec[0] == phase and int(spec[1]) == epoch:
        Path(os.environ["TPNET_TEST_STALL_FILE"]).touch()
        time.sleep(float(spec[2]) if len(spec) > 2 else 300.0)


def kill_rank(rank: int, epoch: int) -> None:
    """``TPNET_TEST_KILL_RANK=r`` + ``TPNET_TEST_KILL_AT_EPOCH=e``: rank r exits (no clean-up) at the start of epoch
    index e, on the first torchrun attempt only, to test that a lost rank fails the job fast and that
    ``torchrun --max-restarts`` resumes it."""
    want_rank, at = os.environ.get("TPNET_TEST_KILL_RANK"), os.environ.get("TPNET_TEST_KILL_AT_EPOCH")
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if (
        want_rank is not None
        and at is not None
        and first_attempt
        and int(want_rank) == rank
        and int(at) == epoch
    ):
        log.error("TPNET_TEST_KILL_RANK: rank %d exits at epoch index %d", rank, epoch)
        os._exit(1)


def slow_checkpoint_write() -> None:
    """``TPNET_TEST_SLOW_CHECKPOINT_S``: sleep between writing a checkpoint's temp file and the rename."""
    time.sleep(float(os.environ.get("TPNET_TEST_SLOW_CHECKPOINT_S", "0")))
