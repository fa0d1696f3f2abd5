#!/bin/bash
# Issue 14: decode step ms vs its roofline for batch 1-256 x context 512/2k/8k (18 shapes compiled ahead of
# time on 16 threads), and the per-kernel GPU time and launch count of the profiled steps (batch 1: 81% of its
# roofline in session 8; which small kernels, ~320 a step, make up the rest). ~4 min; BATCHES, CONTEXTS,
# PROFILES ("B,CTX ...") and NAME narrow it (batch 1/64/128/256 at 512 with three profiles: ~2 min).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout ${TIMEOUT:-420} python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --roofline \
  --batches ${BATCHES:-1 8 32 64 128 256} --contexts ${CONTEXTS:-512 2048 8192} --iters 20 \
  --profile ${PROFILES:-1,512 256,512} --out $OUT/${NAME:-decode_roofline_8b_h200}.json 2>&1 | quiet 30
