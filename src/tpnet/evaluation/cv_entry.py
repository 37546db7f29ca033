"""The ``tpnet-cv`` command: checks the training extra is installed (one line and exit 2 if not, see
``tpnet.extras``), then runs ``tpnet.evaluation.cv_cli``."""

from __future__ import annotations

from tpnet.extras import run_tool


def main() -> None:
    run_tool("tpnet-cv", "train", "tpnet.evaluation.cv_cli")


if __name__ == "__main__":
    main()
