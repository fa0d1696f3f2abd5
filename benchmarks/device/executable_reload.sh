#!/bin/bash
# Issue 14: why executables holding Mosaic GPU kernels fail to load in a new process (the Hopper path's warm
# start keeps tracing and lowering them): two kernels compiled and serialized, then loaded in fresh processes
# with $MOSAIC_GPU_RUNTIME_LIB_PATH unset (the failure), set by compile_cache.mosaic_gpu_runtime (the fix), and
# after lowering first (benchmarks/executable_reload.py). ~1-2 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 300 python3 benchmarks/executable_reload.py --out $OUT/executable_reload_h200.json 2>&1 | quiet 20
