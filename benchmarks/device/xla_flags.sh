#!/bin/bash
# Issue 14: the decode step (8B, batch 1 / 64 / 256 x context 512) under XLA flag variants, batch 1 and 64
# traced per variant (per-kernel GPU time and launches). Session 18's profile: at batch 1 the QKV and output
# projections read their weights at 3.3 TB/s (the larger GEMMs at 4.2-4.5), and ~290 small kernels of ~2 us
# make up the rest; at batch 64 a residual-add fusion costs 10 us a layer. The variants: programmatic
# dependent launch (kernel prologues overlap the previous kernel's tail, Hopper), the GEMM autotuner's
# exhaustive tiling search, cuBLAS instead of XLA's Triton GEMMs, Triton for elementwise chains, Triton
# multi-output fusions (a residual add with the RMSNorm that reads it), the block-level fusion rewriter
# (fusions as Triton kernels), the fusion autotuner (Triton or XLA's emitter per fusion). Each flag exists
# in jax 0.10.2 and 0.12 (tests/benchmarks/test_device_scripts.py); an unknown one aborts its variant only.
# ~1-1.5 min a variant (exhaustive: up to 5): the default six fit one call; VARIANTS="block_level fusion_autotuner"
# is a second.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
declare -A FLAGS=(
  [default]=""
  [pdl]="--xla_gpu_enable_pdl=true"
  [exhaustive]="--xla_gpu_exhaustive_tiling_search=true"
  [cublas]="--xla_gpu_enable_triton_gemm=false"
  [triton_fusions]="--xla_gpu_experimental_enable_triton_heroless_priority_fusion=true"
  [triton_multi_output]="--xla_gpu_unsupported_enable_triton_multi_output_fusion=true"
  [block_level]="--xla_gpu_experimental_enable_fusion_block_level_rewriter=true"
  [fusion_autotuner]="--xla_gpu_experimental_enable_fusion_autotuner=true"
)
# ROUNDS=2 runs the variants twice, alternating (files _r1, _r2): a 3-5% difference at batch 256 is within one
# call's noise (session 20: the default at 11.29 and 11.88 ms in two calls). The exhaustive tiling search
# needs more than 90 s to compile the three shapes (session 20: cut off): it gets 300 s unless TIMEOUT is set.
runs=()
for r in $(seq 1 ${ROUNDS:-1}); do
  for v in ${VARIANTS:-default pdl exhaustive cublas triton_multi_output triton_fusions}; do
    name=decode_xla_${v}$([ "${ROUNDS:-1}" = 1 ] || echo "_r$r")_8b_h200
    echo "== $name: ${FLAGS[$v]}"
    t=${TIMEOUT:-$([ $v = exhaustive ] && echo 300 || echo 90)}
    XLA_FLAGS="${FLAGS[$v]}" timeout $t python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
      --roofline --batches ${BATCHES:-1 64 256} --contexts 512 --iters 30 --profile ${PROFILES:-1,512 64,512} --out $OUT/$name.json 2>&1 | quiet 14
    [ -f $OUT/$name.json ] && runs+=($OUT/$name.json)
  done
done
python3 benchmarks/compare_decode.py "${runs[@]}" --out $OUT/decode_xla_compare_8b_h200.json --markdown
