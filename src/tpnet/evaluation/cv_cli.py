"""``tpnet-cv summarize SWEEP_DIR`` / ``tpnet-cv compare SWEEP_DIR ...`` (placeholder: issue #13, CV helper)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("tpnet-cv: not implemented yet", file=sys.stderr)
    return 2
