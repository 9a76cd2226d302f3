#!/usr/bin/env bash
# The docs command: README.md from nbs/index.ipynb (nbdev-readme) and the site in _docs/ (nbdev-docs), offline.
# Quarto has no offline install (quarto-cli on PyPI downloads it from GitHub while it installs), so
# scripts/docs/quarto stands in for it, on the pandoc that pypandoc-binary ships. Pages show the notebooks'
# saved outputs; nothing is executed (nbdev runs only export and import cells, to document what they define).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export PATH="$PWD/scripts/docs:$PWD/$VENV/bin:$PATH" PYTHONPATH="$PWD/scripts/docs${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)
nbdev-readme
nbdev-docs
echo "docs: _docs/index.html ($(find _docs -name '*.html' | wc -l) pages, $(du -sh _docs | cut -f1)) in $(( $(date +%s) - start ))s"
