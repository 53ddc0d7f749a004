#!/usr/bin/env bash
# Set everything up and run the tests. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CEPO_CACHE=${CEPO_CACHE:-$PWD/.cache/cepo}
# The package's layers (contracts in pyproject.toml): an upward import fails the run.
layers=$(.venv/bin/lint-imports --no-cache 2>&1) || { echo "$layers"; exit 1; }
echo "import layers: $(echo "$layers" | grep '^Contracts:')"
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when a marker selection collects nothing: not a failure of the suite.
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
