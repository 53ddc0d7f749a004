#!/usr/bin/env bash
# Set everything up and run the main job on the built-in default:
# GRPO on multi-step arithmetic with the built-in ~1M-parameter base (its supervised
# warm-up runs once and is cached). Extra arguments go to `cepo fit`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/cepo fit --config configs/default.yaml "$@"
