"""Run ``tpnet-infer`` from a source checkout: ``python scripts/infer.py --model M --input IN --output OUT``."""

import sys

from tpnet.inference.entry import main

if __name__ == "__main__":
    sys.exit(main())
