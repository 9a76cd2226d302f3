#!/usr/bin/env bash
# The docs command: README.md from nbs/index.ipynb (nbdev-readme), then the site in _docs/ (nbdev-docs), offline.
# Quarto cannot be installed offline (quarto-cli on PyPI downloads it from GitHub while it installs), so
# scripts/docs/quarto stands in for it, on the pandoc that pypandoc-binary ships; DOCS_QUARTO=system uses the
# `quarto` already on PATH instead. Pages show the outputs the notebooks were saved with: no notebook cell runs
# (API docs come from the exported modules: scripts/docs/nbdev_procs.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
case $VENV in /*) ;; *) VENV=$PWD/$VENV ;; esac
export PATH="$VENV/bin:$PATH" PYTHONPATH="$PWD/scripts/docs${PYTHONPATH:+:$PYTHONPATH}"
[ "${DOCS_QUARTO:-}" = system ] || export PATH="$PWD/scripts/docs:$PATH"
start=$(date +%s)
nbdev-readme
nbdev-docs
# every notebook must have its page (a page that failed to render must not pass unnoticed)
nbs=$(find nbs -name '*.ipynb' -not -path '*/.*' -not -path '*/_*' | wc -l)
pages=$(find _docs -name '*.html' -not -path '_docs/site_libs/*' | wc -l)
if [ "$pages" -lt "$nbs" ]; then echo "docs: $pages pages for $nbs notebooks in nbs/"; exit 1; fi
echo "docs: _docs/index.html ($pages pages, $(du -sh _docs | cut -f1)) in $(( $(date +%s) - start ))s"
