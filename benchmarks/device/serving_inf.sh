#!/bin/bash
# Issue 12 on the GPU, rate inf only: the server with --no-engine-process (the engine on a thread of the server's
# process) vs the in-process Engine (random 512/128 and ShareGPT), then the server as launched by default (the
# engine in a child process: HTTP work never holds the GIL the engine's loop thread needs). ~5 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
mkdir -p $OUT/tmp
S="--max-running-requests 64 --chunked-prefill-size 512 --seq-buckets 64 --warmup"
W="--client builtin --model .gpu/model8b --load-format dummy --datasets random sharegpt --rates inf --num-prompts 64
   --input-len 512 --output-len 128"
TMPDIR=$OUT/tmp timeout 200 python3 benchmarks/serving.py $W --server-args "$S --no-engine-process" \
  --out $OUT/serving_inf_8b_h200.json 2>&1 | quiet 8
TMPDIR=$OUT/tmp timeout 150 python3 benchmarks/serving.py $W --server-args "$S" \
  --no-in-process --out $OUT/serving_inf_engine_process_8b_h200.json 2>&1 | quiet 4
