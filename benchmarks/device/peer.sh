#!/bin/bash
# Issue 14: HF transformers vs jaxsgl in one call, same requests (benchmarks/_common.py builds both). ~9 min.
# PEER_IMPLS picks jaxsgl's attention paths (default: the Hopper path and the A100 path); HF_DATASETS what HF runs
# (default random: HF's ShareGPT run takes ~5 min (1,024 steps of a static batch), `peer.sh hf-sharegpt` runs it alone); CHUNK jaxsgl's
# --chunked-prefill-size (default 8192); SKIP_HF=1 runs jaxsgl alone; OFFLINE_ARGS more offline_throughput.py flags.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
W="--num-prompts 256 --input-len 128 128 --output-len 128 128 --seed 0"
if [ "$1" = hf-sharegpt ]; then
  timeout 420 python3 benchmarks/peer_hf.py --model .gpu/model8b --load-format dummy $W --datasets sharegpt \
    --batch-size 256 --batch1-output 0 --out $OUT/peer_hf_sharegpt_8b_h200.json 2>&1 | quiet 12
  exit
fi
[ -n "$SKIP_HF" ] || timeout ${HF_TIMEOUT:-200} python3 benchmarks/peer_hf.py --model .gpu/model8b --load-format dummy $W \
  --datasets ${HF_DATASETS:-random} --batch-size 256 --batch1-output 32 --out $OUT/peer_hf_8b_h200.json 2>&1 | quiet 12
for impl in ${PEER_IMPLS:-auto pallas_triton}; do
  timeout 170 python3 benchmarks/offline_throughput.py --model .gpu/model8b --load-format dummy $W \
    --datasets random sharegpt --cache-modes on --max-running-requests 256 --seq-buckets 1 8 32 64 128 256 \
    --chunked-prefill-size ${CHUNK:-8192} --attention-backend $impl --batch1-output 32 $OFFLINE_ARGS \
    --out $OUT/offline_8b_h200_${impl}_chunk${CHUNK:-8192}.json 2>&1 | quiet 12
done
