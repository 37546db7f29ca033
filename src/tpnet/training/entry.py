"""The ``tpnet-train`` command: checks the training extra is installed (one line and exit 2 if not, see
``tpnet.extras``), then runs ``tpnet.training.cli``. ``python scripts/train.py`` runs the cli module directly."""

from __future__ import annotations

from tpnet.extras import run_tool


def main() -> None:
    run_tool("tpnet-train", "train", "tpnet.training.cli")


if __name__ == "__main__":
    main()
