#!/bin/bash
# Issue 12 on the GPU: the server vs the in-process Engine (target: the server costs < 5% at rate inf). ~6 min.
# One sequence bucket (64) and 512-token chunks keep the warm-up at 15 step variants (an 8B variant
# compiles in ~9 s on the H200); the in-process engine loads them from JAX's persistent cache.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
python3 -c "import fastapi, uvicorn, pydantic, prometheus_client, httpx, jax; print('imports ok', jax.__version__)"
mkdir -p $OUT/tmp  # the server's log comes back even if the run is cut short
TMPDIR=$OUT/tmp timeout ${SERVING_TIMEOUT:-420} python3 benchmarks/serving.py --client builtin \
  --model .gpu/model8b --load-format dummy \
  --server-args "--max-running-requests 64 --chunked-prefill-size 512 --seq-buckets 64 --warmup" \
  --datasets random sharegpt --rates 1 4 16 inf --num-prompts 64 --input-len 512 --output-len 128 \
  --max-duration 10 --out $OUT/serving_8b_h200.json 2>&1 | quiet 30
