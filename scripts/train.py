"""Run ``tpnet-train`` from a source checkout: ``python scripts/train.py key=value ...`` (same program)."""

from tpnet.training.cli import main

if __name__ == "__main__":
    main()
