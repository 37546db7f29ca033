#!/usr/bin/env bash
# Main job, end to end on the embedded synthetic dataset:
# install -> generate + check data -> train -> evaluate -> export (TorchScript + .pt2) -> batch inference.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_venv.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/demo.py" "$@"
