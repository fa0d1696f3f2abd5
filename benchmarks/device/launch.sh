#!/bin/bash
# Issue 14: how much of an 8B decode step is the host launching it. decode_step.py (batch 64 / 256, context
# 512, --dispatch-study) under variants: default, CUDA graphs (command buffers) off, and XLA's cached
# allocations for command buffers (XLA_COMMAND_BUFFERS_USE_CACHED_ALLOCS=1: changed buffer addresses are
# copied to stable ones instead of re-recording the graph). ~4 min. VARIANTS overrides the list.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
run() {  # name, then env assignments
  local name=$1; shift
  echo "== $name: $*"
  env "$@" timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
    --batches ${BATCHES:-64 256} --context 512 --iters 20 --narrow-only --dispatch-study \
    --out $OUT/decode_launch_${name}_8b_h200.json 2>&1 | quiet 8
}
for v in ${VARIANTS:-default cached nographs}; do
  case $v in
    default) run default X=1 ;;
    cached) run cached XLA_COMMAND_BUFFERS_USE_CACHED_ALLOCS=1 ;;
    nographs) run nographs XLA_FLAGS=--xla_gpu_enable_command_buffer= ;;
  esac
done
