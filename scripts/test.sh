#!/usr/bin/env bash
# The README's test command: set up .venv and run the whole suite; then the kernel and engine tests again
# on Python 3.12 with the newest jax (pip's latest) in .venv312. `.ci/run` runs this.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/python -m pytest -q

# Python 3.12 is required, never skipped: `python3.12` on PATH, else pyenv's newest 3.12.
py312=""
for c in python3.12 "$(pyenv root 2>/dev/null || echo ~/.pyenv)"/versions/3.12*/bin/python3.12; do
  if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1; then py312=$c; break; fi
done
[ -n "$py312" ] || { echo ".ci/run: no working Python 3.12 (e.g. pyenv install 3.12.1): the newest-jax leg cannot run" >&2; exit 1; }
PYTHON=$py312 VENV=.venv312 scripts/setup.sh --test-core
.venv312/bin/python -c 'import jax, sys; print(f"newest-jax leg: Python {sys.version.split()[0]}, jax {jax.__version__}")'
# Not here: the constrained-decoding engine tests (the heaviest engine file, ~8 min alone: over this leg's
# budget); the device grammar tables' own tests run.
.venv312/bin/python -m pytest -q -x -p no:cacheprovider tests/kernels tests/engine \
  --ignore=tests/engine/test_engine_constrained.py
