#!/bin/bash
# Issue 14 (session 23): the decode cells still under 85% of the roofline at small batch (1 / 8 / 32 x 512,
# 1 / 8 x 2k, 1 x 8k), per setting, three of them traced (per-kernel GPU time and launches):
#   default; max_splits64: batch 1's decode attention split up to 64 ways (JAXSGL_MAX_SPLITS; 16 by default:
#   128 programs at batch 1 x 8k); add_norm: each residual add and its RMSNorm in one kernel
#   (JAXSGL_FUSED_ADD_NORM=1, never timed alone); no_split_k: XLA's GEMMs without split-K, whose partial sums'
#   reduction XLA fuses into the GEMM's consumers (a custom call cannot take it: it becomes a kernel of its own);
#   add_norm_no_split_k: both.
# The default's optimized HLO and GEMM autotuning results are dumped (hlo_default.tgz: which fusion is which).
# ~1-1.5 min a setting; VARIANTS narrows.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
export JAXSGL_GPU_EXECUTABLE_CACHE=0  # every setting compiles (the dumps need it)
declare -A ENVS=([default]="" [max_splits64]="JAXSGL_MAX_SPLITS=64" [add_norm]="JAXSGL_FUSED_ADD_NORM=1"
                 [no_split_k]="" [add_norm_no_split_k]="JAXSGL_FUSED_ADD_NORM=1")
declare -A XLA=([no_split_k]="--xla_gpu_experimental_force_split_k=1" [add_norm_no_split_k]="--xla_gpu_experimental_force_split_k=1")
runs=()
for v in ${VARIANTS:-default max_splits64 add_norm no_split_k add_norm_no_split_k}; do
  dump=$([ $v = default ] && echo "--xla_dump_to=/tmp/hlo --xla_dump_hlo_as_text --xla_gpu_dump_autotune_results_to=/tmp/hlo/autotune.txt")
  xf=$(echo ${XLA[$v]} $dump)  # XLA reads a value not starting with "--" as a file name
  if [ -n "$xf" ]; then export XLA_FLAGS="$xf"; else unset XLA_FLAGS; fi
  echo "== $v: ${ENVS[$v]} $xf"
  env ${ENVS[$v]} timeout ${TIMEOUT:-150} python3 benchmarks/decode_step.py \
    --model .gpu/model8b --load-format dummy --roofline --batches ${BATCHES:-1 8 32} --contexts ${CONTEXTS:-512 2048 8192} \
    --iters 30 --profile ${PROFILES:-1,512 8,512 1,8192} --out $OUT/decode_small_${v}_8b_h200.json 2>&1 | quiet 12
  [ -f $OUT/decode_small_${v}_8b_h200.json ] && runs+=($OUT/decode_small_${v}_8b_h200.json)
done
[ -d /tmp/hlo ] && (cd /tmp/hlo && tar czf $OUT/hlo_default.tgz $(ls | grep -E 'after_optimizations.txt$|autotune') 2>/dev/null)
python3 benchmarks/compare_decode.py "${runs[@]}" --out $OUT/decode_small_compare_8b_h200.json --markdown
