#!/usr/bin/env bash
# Set everything up and run the tests. Extra arguments go to pytest (e.g. -m slow).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CEPO_CACHE=${CEPO_CACHE:-$PWD/.cache/cepo}
set +e
.venv/bin/python -m pytest "$@"
rc=$?
set -e
# pytest exits 5 when a marker selection collects nothing: not a failure of the suite.
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
