#!/bin/bash
# Issue 14: the engine at the model's context (a 131,072-token page table) vs --context-length 4096, same
# 256 x 128/128 run, each with one more traced pass (--profile: GPU kernel time vs the wall). ~5 min.
# IMPLS picks the attention paths (default: auto).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
W="--num-prompts 256 --input-len 128 128 --output-len 128 128 --seed 0"
for impl in ${IMPLS:-auto}; do
  for ctx in default 4096; do
    C=$([ $ctx = default ] || echo "--context-length $ctx")
    timeout 170 python3 benchmarks/offline_throughput.py --model .gpu/model8b --load-format dummy $W \
      --datasets random --cache-modes on --max-running-requests 256 --seq-buckets 1 8 32 64 128 256 \
      --chunked-prefill-size 8192 --attention-backend $impl --batch1-output 0 --profile $C $OFFLINE_ARGS \
      --out $OUT/offline_ctx_${ctx}_${impl}_8b_h200.json 2>&1 | grep -v profile: | quiet 6
  done
done
