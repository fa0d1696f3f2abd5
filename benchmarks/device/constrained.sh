#!/bin/bash
# Issue 11 on the GPU: the mask + next-state cost per decode step, then jump-forward. ~6 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 240 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --batches 1 64 256 \
  --context 512 --iters 50 --narrow-only --grammar --out $OUT/decode_step_grammar_8b_h200.json 2>&1 | quiet 12
timeout 300 python3 benchmarks/constrained.py --model-path .gpu/smol --load-format dummy --batch-sizes 1 \
  --new-tokens 16 --schemas 10 --regexes 10 --names 50 --data .gpu/data \
  --out $OUT/constrained_jf_smol_h200.json 2>&1 | quiet 12
