#!/bin/bash
# Issue 11 on the GPU: the mask + next-state cost per decode step, then jump-forward. ~4 min.
# `constrained.sh jf` runs only the jump-forward part (~2-6 min: each of its four engines compiles the automaton and its step shapes; 200 s was not enough in session 9).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
[ "$1" = jf ] || timeout 240 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
  --batches 1 64 256 --context 512 --iters 50 --narrow-only --grammar \
  --out $OUT/decode_step_grammar_8b_h200.json 2>&1 | quiet 12
timeout $( [ "$1" = jf ] && echo 420 || echo 200 ) python3 benchmarks/constrained.py --model-path .gpu/smol --load-format dummy --batch-sizes 1 $( [ "$1" = jf ] && echo --jf-only ) \
  --new-tokens 8 --schemas 4 --regexes 4 --names 50 --data .gpu/data \
  --out $OUT/constrained_jf_smol_h200.json 2>&1 | quiet 12
