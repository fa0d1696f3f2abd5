#!/bin/bash
# Issue 14 (session 23): the decode step at small batch and long context with the decode class's launch shape
# set by hand (`decode_step.py --decode-config BLOCK_K,SPLITS,WARPS,STAGES`; splits 0: block_configs' own),
# one process per shape, batch 1 x 8k traced in each. In the
# step, batch 1 x 8k's attention takes 19.8 us a layer for 33.5 MB of KV (1.7 TB/s: 16 splits x 8 KV heads, 8
# blocks of 64 tokens a program); attention.py's standalone tuning is too noisy at these sizes to choose from
# (session 23). ~40 s a shape.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
runs=()
for c in ${CONFIGS:-default 128,0,8,3 256,0,8,2 64,0,4,4 64,32,4,3 256,8,8,2}; do
  name=decode_cfg_$(echo $c | tr , _)_8b_h200
  arg=$([ $c = default ] || echo "--decode-config $c")
  echo "== $c"
  timeout ${TIMEOUT:-120} python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --roofline \
    --batches ${BATCHES:-1 8} --contexts ${CONTEXTS:-512 2048 8192} --iters 30 --profile ${PROFILES:-1,8192} $arg \
    --out $OUT/$name.json 2>&1 | quiet 3
  [ -f $OUT/$name.json ] && runs+=($OUT/$name.json)
done
python3 benchmarks/compare_decode.py "${runs[@]}" --out $OUT/decode_cfg_compare_8b_h200.json --markdown
