"""Test-only fault injection for ``tpnet-infer``, inert unless its environment variable is set.

The interruption tests (tests/inference/test_interrupt.py) send SIGINT / SIGTERM to a real run mid-way;
this hook makes "mid-way" last long enough to hit, whatever the machine's speed. Nothing here runs in
normal use (same pattern as tpnet.training.fault_injection).
"""

from __future__ import annotations

import os
import time


def slow_frame() -> None:
    """``TPNET_TEST_INFER_FRAME_DELAY_S=<seconds>``: sleep that long after each frame is analysed."""
    delay = os.environ.get("TPNET_TEST_INFER_FRAME_DELAY_S")
    if delay:
        time.sleep(float(delay))
