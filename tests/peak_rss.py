"""Test helper: run a tool's ``main`` in a child process and read that child's own peak RSS (VmHWM: its memory
since exec; ``ru_maxrss`` would include the parent's memory at fork). Linux only (``/proc``)."""

from __future__ import annotations

import re
import subprocess
import sys

_SCRIPT = r"""
import re, sys
from {module} import main
try:
    code = main(sys.argv[1:])
finally:
    peak_kib = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))
    print(f"PEAK_MIB {{peak_kib / 1024:.1f}}", file=sys.stderr)
sys.exit(code)
"""


def run_with_peak_rss(
    module: str, args: list[str], timeout: float = 300
) -> tuple[subprocess.CompletedProcess, float]:
    """(the finished process, its peak RSS in MiB) for ``python -c 'from <module> import main; main(args)'``."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT.format(module=module), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    peak = re.search(r"PEAK_MIB (\S+)", done.stderr)
    return done, float(peak.group(1)) if peak else float("nan")
