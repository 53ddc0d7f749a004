#!/usr/bin/env bash
# Create .venv and install cepo with its dependencies. Quick when nothing changed:
# installs are skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp_src=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$VENV/.cepo-stamp" ] && [ "$(cat "$VENV/.cepo-stamp")" = "$stamp_src" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# torch first, pinned: on CPU machines this wheel is local; a bare requirement would pull a
# multi-GB CUDA build.
$PIP install -q --disable-pip-version-check torch==2.13.0
$PIP install -q --disable-pip-version-check -e ".[dev]"
echo "$stamp_src" > "$VENV/.cepo-stamp"
