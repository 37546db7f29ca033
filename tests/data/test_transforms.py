"""The augmentation module must not reach the network when it is imported."""

from __future__ import annotations

import os
import subprocess
import sys

_CHILD = r"""
import socket, urllib.request

def refuse(*args, **kwargs):
    raise AssertionError(f"network call while importing tpnet.data.transforms: {args[:1]}")

urllib.request.urlopen = refuse
socket.create_connection = refuse
import tpnet.data.transforms  # noqa: F401
print("imported")
"""


def test_importing_transforms_makes_no_network_call():
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported" in done.stdout
    assert "Error fetching version info" not in done.stderr
