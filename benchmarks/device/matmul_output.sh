#!/bin/bash
# Issue 14: the 8B decode step with the GEMMs' f32 result converted (reference) vs written in bf16 by the
# GEMM itself (JAXSGL_MATMUL_OUTPUT=native), batch 1/64/256 at context 512, batch 256 traced. ~3 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
for mode in ${MATMUL_MODES:-native f32}; do
  JAXSGL_MATMUL_OUTPUT=$mode timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
    --roofline --batches 1 64 256 --contexts 512 --iters 20 --profile 256,512 \
    --out $OUT/decode_matmul_${mode}_8b_h200.json 2>&1 | quiet 8
done
