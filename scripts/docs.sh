#!/usr/bin/env bash
# The docs command: README.md from nbs/index.ipynb, then the site in _docs/, offline: nbdev prepares the notebooks,
# Sphinx with myst-nb and sphinx-book-theme renders them (scripts/docs/build.py says how). Pages show the outputs the
# notebooks were saved with: no notebook cell runs. `--force` prepares every notebook again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
export PATH="$VENV/bin:$PATH" PYTHONPATH="$PWD/scripts/docs${PYTHONPATH:+:$PYTHONPATH}"
python scripts/docs/build.py "$@"
