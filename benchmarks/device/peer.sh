#!/bin/bash
# Issue 14: HF transformers vs jaxsgl in one call, same requests (benchmarks/_common.py builds both). ~9 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
W="--datasets random sharegpt --num-prompts 256 --input-len 128 128 --output-len 128 128 --seed 0"
timeout 200 python3 benchmarks/peer_hf.py --model .gpu/model8b --load-format dummy $W --batch-size 256 \
  --batch1-output 32 --out $OUT/peer_hf_8b_h200.json 2>&1 | quiet 12
for impl in ${PEER_IMPLS:-auto pallas_triton}; do
  timeout 170 python3 benchmarks/offline_throughput.py --model .gpu/model8b --load-format dummy $W \
    --cache-modes on --max-running-requests 256 --seq-buckets 1 8 32 64 128 256 --chunked-prefill-size 2048 \
    --attention-backend $impl --batch1-output 32 --out $OUT/offline_8b_h200_$impl.json 2>&1 | quiet 12
done
