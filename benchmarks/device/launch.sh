#!/bin/bash
# Issue 14: how much of an 8B decode step is the host launching it. decode_step.py (batch 256, context
# 512, --dispatch-study: the step launched on device buffers, from host arrays, from page-locked host memory
# copied inside the step, and as run_async; idle and with a step in flight) under variants: default, PJRT's
# asynchronous dispatch (async_dispatch: launches and input waits on a dispatch thread), XLA's spin-wait host
# callbacks (spinwait: cuLaunchHostFunc stalls on CUDA >= 12.9; compiled in only for CUDA >= 13.2), CUDA
# graphs off (nographs). ~1 min a variant. VARIANTS overrides the list (default: default async_dispatch
# spinwait); BATCHES the batch sizes. The default variant also traces the busy launches' host events.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
run() {  # name, then env assignments
  local name=$1; shift
  echo "== $name: $*"
  env "$@" timeout 150 python3 benchmarks/decode_step.py --model .gpu/model8b --load-format dummy \
    --batches ${BATCHES:-256} --context 512 --iters 20 --narrow-only --dispatch-study $EXTRA \
    --out $OUT/decode_launch_${name}_8b_h200.json 2>&1 | quiet 32
}
for v in ${VARIANTS:-default async_dispatch spinwait}; do
  case $v in
    default) EXTRA=--dispatch-trace run default X=1 ;;
    async_dispatch) run async_dispatch PJRT_GPU_ENABLE_ASYNC_DISPATCH=1 ;;
    spinwait) run spinwait XLA_CUDA_HOST_CALLBACK_SPINWAIT=1 ;;
    nographs) run nographs XLA_FLAGS=--xla_gpu_enable_command_buffer= ;;
  esac
done
