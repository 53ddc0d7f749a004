#!/usr/bin/env bash
# Collect the wheels that benchmarks/gpu_check.py (and `cepo fit`) need on the lent GPU machine, which
# reaches no package registry and lacks them: jsonargparse with its `signatures` extra, math-verify,
# and their requirements that machine does not have (its package list: docs/scaling.md, "Checking
# the GPU path"). All are pure Python (py3-none-any), downloaded for CPython 3.12 without their
# dependencies (the list below is the exact closure), into .gpu_wheels/ (git-ignored), and checked
# against the 64 MiB that a run may carry. Prints the one command to run there.
#   bash scripts/gpu_wheels.sh [DEST]      # DEST default .gpu_wheels
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.gpu_wheels}
PY=${PYTHON:-python3}
WHEELS=(
  jsonargparse==4.53.0          # cepo's CLI (LightningCLI); lightning.pytorch.cli imports it when present
  docstring-parser==0.18.0      # jsonargparse[signatures]
  typeshed-client==2.15.0       # jsonargparse[signatures] (needs typing-extensions: on that machine)
  math-verify==0.9.0            # answer checking of JSONL tasks
  latex2sympy2_extended==1.11.0 # math-verify (needs sympy: on that machine)
  antlr4-python3-runtime==4.13.2  # latex2sympy2_extended
)
LIMIT_MIB=64
mkdir -p "$DEST"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --abi none --platform any -d "$DEST" "${WHEELS[@]%%#*}"
count=$(ls "$DEST"/*.whl | wc -l)
if [ "$count" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: $DEST holds $count wheels, expected ${#WHEELS[@]} (one version of each): empty it and run again" >&2
  exit 1
fi
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "gpu_wheels: ${#WHEELS[@]} wheels, $mib MiB in $DEST (limit ${LIMIT_MIB} MiB with the working tree)"
if [ "$mib" -ge "$LIMIT_MIB" ]; then
  echo "gpu_wheels: over the ${LIMIT_MIB} MiB a run may carry" >&2
  exit 1
fi
echo "run there (carry $DEST):"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $DEST/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out \$OUT"
