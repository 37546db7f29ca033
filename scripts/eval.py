"""Same program as ``tpnet-eval``: ``python scripts/eval.py key=value ...``."""

from tpnet.evaluation.cli import main

if __name__ == "__main__":
    main()
