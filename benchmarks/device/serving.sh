#!/bin/bash
# Issue 12 on the GPU: the server vs the in-process Engine (target: the server costs < 5% at rate inf). ~8 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
python3 -c "import fastapi, uvicorn, pydantic, prometheus_client, httpx, jax; print('imports ok', jax.__version__)"
timeout 540 python3 benchmarks/serving.py --client builtin --model .gpu/model8b --load-format dummy \
  --server-args "--max-running-requests 64 --chunked-prefill-size 2048 --seq-buckets 1 8 32 64 --warmup" \
  --datasets random sharegpt --rates 1 4 16 inf --num-prompts 64 --input-len 512 --output-len 128 \
  --max-duration 15 --out $OUT/serving_8b_h200.json 2>&1 | quiet 30
