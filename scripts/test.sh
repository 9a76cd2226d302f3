#!/usr/bin/env bash
# The test command: notebook cells (nbdev-test) then pytest. Slow tests and cells (processes, Jupyter kernels,
# servers, PostgreSQL, SmolLM2: see tests/conftest.py) run too; pass --fast to skip them while iterating.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/$VENV/bin:$PATH"
export WANDB_MODE=${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ "${1:-}" = "--fast" ]; then flags=""; marks=(-m "not slow"); else flags="slow"; marks=(); fi
nbdev-test --flags "$flags" --timing
pytest -q --durations=30 "${marks[@]}" tests
