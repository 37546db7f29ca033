"""tpnet-infer's allocator settings: buffers the size of network activations go back to the system on free."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Allocates and frees a 24 MiB buffer twice, then prints how much of it the process still holds (MiB).
# With glibc's default dynamic threshold the first free raises the mmap threshold to 24 MiB, so the second
# buffer comes from the heap and stays resident after free (trimming only starts above 2x that threshold).
_CHILD = r"""
import re, sys
import numpy as np
if sys.argv[1] == "bounded":
    from tpnet.inference.memory import bound_cpu_memory
    assert bound_cpu_memory()

def rss_mib():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

size = 24 << 20
for _ in range(2):
    before = rss_mib()
    buf = np.ones(size, np.uint8)  # touch every page
    del buf
print(rss_mib() - before)
"""


def _retained_mib(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc allocator settings (Linux only)")
def test_bounded_allocator_returns_large_buffers_to_the_system():
    assert _retained_mib("default") > 16  # the failure the setting exists for: glibc keeps the buffer
    assert _retained_mib("bounded") < 4


def test_bound_cpu_memory_asks_pytorch_for_huge_pages_and_respects_the_user(monkeypatch):
    from tpnet.inference import memory

    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "1048576")  # the user's own glibc setting wins
    assert memory.bound_cpu_memory() is False
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    memory.bound_cpu_memory()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
