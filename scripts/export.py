"""Same program as ``tpnet-export``: ``python scripts/export.py key=value ...``."""

from tpnet.export.cli import main

if __name__ == "__main__":
    main()
