#!/bin/bash
# Issue 14: the decode step (8B, batch 1 / 8 / 64 / 256 x context 512; BATCHES, CONTEXTS widen it) with
# the layer's small XLA kernels fused away, batch 1 and 64 traced per setting: "base" (none), "decode" (q
# RoPE and the K/V scatters in the decode attention kernel: $JAXSGL_FUSED_DECODE=1, kernels/fused_decode.py),
# "norm" (that, and each residual add with the RMSNorm after it in one kernel: $JAXSGL_FUSED_ADD_NORM=1,
# kernels/add_norm.py). At batch 1 they should remove 3 and then 2 more of the ~8 kernels of ~2 us a
# layer. Then greedy tokens of the engine with both off and on (greedy_parity.sh). ~1.7 min per setting +
# ~2 min of parity.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
declare -A SETTING=([base]="0 0" [decode]="1 0" [norm]="1 1")
for name in ${SETTINGS:-base decode norm}; do
  read -r dec norm <<< "${SETTING[$name]}"
  echo "== $name: JAXSGL_FUSED_DECODE=$dec JAXSGL_FUSED_ADD_NORM=$norm"
  JAXSGL_FUSED_DECODE=$dec JAXSGL_FUSED_ADD_NORM=$norm timeout ${TIMEOUT:-150} python3 benchmarks/decode_step.py \
    --model .gpu/model8b --load-format dummy --roofline --batches ${BATCHES:-1 8 64 256} \
    --contexts ${CONTEXTS:-512} --iters 30 --profile ${PROFILES:-1,512 64,512} \
    --out $OUT/decode_fused_${name}_8b_h200.json 2>&1 | quiet 18
done
python3 benchmarks/compare_decode.py $(for n in ${SETTINGS:-base decode norm}; do echo $OUT/decode_fused_${n}_8b_h200.json; done) \
  --out $OUT/decode_fused_compare_8b_h200.json --markdown
[ -n "$SKIP_PARITY" ] || PARITY_ENV="JAXSGL_FUSED_DECODE JAXSGL_FUSED_ADD_NORM" bash benchmarks/device/greedy_parity.sh
