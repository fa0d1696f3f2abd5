#!/bin/bash
# Greedy parity of the 8B engine (dummy weights, bf16) across schedules (sync / overlap / radix cache off;
# benchmarks/greedy_parity.py) under settings, then the decode step's cost of deterministic inference.
# By default a row summed in another batch parts at a bf16 near-tie (session 22, H100: overlap vs sync 59/64,
# radix cache off 4/64; with the option 64/64 both). VARIANTS (default "default deterministic gemm"):
# deterministic = --enable-deterministic-inference (fixed row blocks, one attention class,
# model_runner.DETERMINISTIC_XLA_OPTIONS); gemm = those XLA options alone, as XLA_FLAGS (no split-K GEMMs,
# bf16 rounded where written); cublas = cuBLAS GEMMs instead of XLA's Triton ones.
# ~1.5 min a variant, then ~3 min for the step timings at both page-table widths (STEP=0 skips them, PARITY=0
# the parity runs; STEP_ARGS replaces the step timings' batches / contexts / widths).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
declare -A XLA=([gemm]="--xla_gpu_experimental_force_split_k=1 --xla_allow_excess_precision=false"
  [cublas]="--xla_gpu_enable_triton_gemm=false")
for v in $([ "${PARITY:-1}" = 0 ] || echo ${VARIANTS:-default deterministic gemm}); do
  flag=""; [ $v = deterministic ] && flag=--enable-deterministic-inference
  echo "== $v: $flag XLA_FLAGS=${XLA[$v]}"
  XLA_FLAGS="${XLA[$v]}" timeout 240 python3 benchmarks/greedy_parity.py --model-path .gpu/model8b \
    --load-format dummy $flag --out $OUT/greedy_parity_${v}_8b_h200.json 2>&1 | quiet 6
done
[ "${STEP:-1}" = 0 ] && exit
for v in default deterministic; do
  flag=""; [ $v = deterministic ] && flag=--enable-deterministic-inference
  timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy $flag \
    --roofline ${STEP_ARGS:---both-widths --batches 1 64 256 --contexts 512} --iters 30 --profile 64,512 \
    --out $OUT/decode_${v}_8b_h200.json 2>&1 | quiet 12
done
python3 benchmarks/compare_decode.py $OUT/decode_default_8b_h200.json $OUT/decode_deterministic_8b_h200.json \
  --out $OUT/decode_deterministic_compare_8b_h200.json --markdown
