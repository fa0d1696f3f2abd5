# Sourced by the device scripts: install the carried wheels, set the environment (run from the repo root).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  .whl/*.whl $( [ -d .whl_server ] && echo .whl_server/*.whl ) $( [ -d .whl_tf ] && echo .whl_tf/*.whl ) 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD JAXSGL_DATA=$PWD/.gpu/data JAXSGL_CACHE=/tmp/jcache JAXSGL_PROGRESS=0
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
quiet() { grep -v '^W0000\|^I0000\|^WARNING: All log' | tail -"${1:-40}"; }
nvidia-smi --query-gpu=name,memory.used --format=csv,noheader
