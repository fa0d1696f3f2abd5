#!/bin/bash
# Issue 14: the decode step with the page table as narrow as the batch needs vs as wide as the model's
# context (8,192 pages for Llama 3.1), batch 64 and 256 at context 512; the batch-256 cell traced at both
# widths (per-kernel GPU time, and the kernels whose time differs most), and the optimized HLO of every
# step module dumped for a diff (hlo.tar.gz). ~4 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
export XLA_FLAGS="--xla_dump_to=/tmp/hlo --xla_dump_hlo_module_re=.*_step.* --xla_dump_hlo_as_text"
timeout 420 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy --batches 64 256 \
  --context 512 --iters 20 --profile 256,512 ${EXTRA:-} --out $OUT/decode_width_8b_h200.json 2>&1 | quiet 60
ls /tmp/hlo | head -20; ls /tmp/hlo | wc -l
tar -czf $OUT/hlo.tar.gz -C /tmp/hlo $(cd /tmp/hlo && ls | grep -E 'after_optimizations.txt$|before_optimizations.txt$' | head -16)
ls -la $OUT
