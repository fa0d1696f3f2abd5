#!/bin/bash
# Greedy parity of the 8B engine (dummy weights, bf16) across schedules (sync / overlap / radix cache off;
# benchmarks/greedy_parity.py) under kernel settings, then the decode step's cost of the invariant kernels.
# Session 20: overlap vs sync agreed on 53/64 rows by default: the decode attention's split count follows the
# padded batch, so a row summed in another batch parts at a bf16 near-tie. VARIANTS (default
# "default invariant invariant+nosplitk invariant+strict"): "invariant" sets JAXSGL_BATCH_INVARIANT=1; "+NAME"
# adds XLA flags: nosplitk: no split-K GEMMs (the autotuner splits the K sum of skinny GEMMs, so a row's sum
# follows the batch's padded size); strict: that, and bf16 rounded wherever the program says (by default XLA
# may keep an f32 intermediate inside a fusion, and fusions follow shapes); cublas: cuBLAS GEMMs instead of
# XLA's Triton ones; det: XLA's deterministic ops.
# ~1.5 min a variant, then ~3 min for the step timings at both page-table widths (STEP=0 skips them).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
declare -A XLA=([nosplitk]="--xla_gpu_experimental_force_split_k=1" [cublas]="--xla_gpu_enable_triton_gemm=false"
  [strict]="--xla_gpu_experimental_force_split_k=1 --xla_allow_excess_precision=false"
  [det]="--xla_gpu_deterministic_ops=true")
for v in ${VARIANTS:-default invariant invariant+nosplitk invariant+strict}; do
  inv=0; [[ $v == invariant* ]] && inv=1
  x=""; [[ $v == *+* ]] && x=${XLA[${v#*+}]}
  echo "== $v: JAXSGL_BATCH_INVARIANT=$inv XLA_FLAGS=$x"
  JAXSGL_BATCH_INVARIANT=$inv XLA_FLAGS="$x" timeout 240 python3 benchmarks/greedy_parity.py --model-path .gpu/model8b \
    --load-format dummy --out $OUT/greedy_parity_${v/+/_}_8b_h200.json 2>&1 | quiet 6
done
[ "${STEP:-1}" = 0 ] && exit
for inv in 0 1; do
  JAXSGL_BATCH_INVARIANT=$inv timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
    --roofline --both-widths --batches 1 64 256 --contexts 512 --iters 30 --profile 64,512 \
    --out $OUT/decode_invariant${inv}_8b_h200.json 2>&1 | quiet 12
done
python3 benchmarks/compare_decode.py $OUT/decode_invariant0_8b_h200.json $OUT/decode_invariant1_8b_h200.json \
  --out $OUT/decode_invariant_compare_8b_h200.json --markdown
