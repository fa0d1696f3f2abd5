#!/bin/bash
# Issue 14: the decode step (8B, batch 1-256 x context 512 / 2k) with each layer's q RoPE and K/V scatters
# fused into the decode attention kernel ($JAXSGL_FUSED_DECODE=1, kernels/fused_decode.py) vs unfused (0),
# batch 1 and 64 at 512 traced per setting (the three ~2 us XLA kernels a layer should be gone: fewer
# "other fusions" launches), then greedy tokens of the engine with the setting off and on
# (greedy_parity.sh). ~2 min per setting + ~2 min of parity.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
for f in ${FUSED:-0 1}; do
  JAXSGL_FUSED_DECODE=$f timeout ${TIMEOUT:-200} python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --roofline \
    --batches ${BATCHES:-1 8 32 64 128 256} --contexts ${CONTEXTS:-512 2048} --iters 30 --profile ${PROFILES:-1,512 64,512} \
    --out $OUT/decode_fused${f}_8b_h200.json 2>&1 | quiet 18
done
[ -n "$SKIP_PARITY" ] || PARITY_ENV=JAXSGL_FUSED_DECODE bash benchmarks/device/greedy_parity.sh
