"""``tpnet-data plan ROOT``: placeholder until the planner lands."""

from __future__ import annotations

from pathlib import Path


def main_plan(root: Path, out: Path | None = None) -> int:
    raise NotImplementedError("tpnet-data plan")
