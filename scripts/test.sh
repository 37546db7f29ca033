#!/usr/bin/env bash
# Install into .venv (if needed), lint, and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_venv.sh"
cd "$ROOT"
"$ROOT/.venv/bin/ruff" check src tests scripts
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose (an empty suite must not pass)" >&2
  exit 1
fi
exit "$status"
