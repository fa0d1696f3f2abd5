#!/bin/bash
# Issue 14: decode step vs its roofline for batch 1-256 x context 512/2k/8k (18 shapes compiled ahead of
# time on 16 threads), and the per-kernel GPU time of the batch-1 and batch-256 steps (batch 1: 81% of its
# roofline in session 8; which small kernels, ~320 a step, make up the rest). ~4 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 420 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --roofline \
  --batches 1 8 32 64 128 256 --contexts 512 2048 8192 --iters 20 --profile 1,512 256,512 \
  --out $OUT/decode_roofline_8b_h200.json 2>&1 | quiet 30
