#!/bin/bash
# Issue 14: 8B ready to serve (every step variant of the serving config compiled), first start on an
# empty cache, second on a warm one: with JAX's cache alone (JAXSGL_GPU_EXECUTABLE_CACHE=0), then with jaxsgl's
# executable cache (the default since session 17). ~5 min.
# `cold_start.sh plain` skips the executable-cache runs (~2.5 min), `cold_start.sh exe` runs only them.
# IMPL=pallas_triton starts the A100 path (no Mosaic kernels).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
E="--max-running-requests 64 --chunked-prefill-size 512 --seq-buckets 64 --attention-backend ${IMPL:-auto}"
SUFFIX=$([ "${IMPL:-auto}" = auto ] || echo "_${IMPL}")
[ "$1" = exe ] || JAXSGL_GPU_EXECUTABLE_CACHE=0 timeout 270 python3 benchmarks/cold_start.py --model-path .gpu/model8b --load-format dummy \
  --engine-args "$E" --starts 2 --out $OUT/cold_start_8b_h200$SUFFIX.json 2>&1 | quiet 6
[ "$1" = plain ] || timeout 270 python3 benchmarks/cold_start.py --model-path .gpu/model8b \
  --load-format dummy --engine-args "$E" --starts 2 --out $OUT/cold_start_8b_h200_executables$SUFFIX.json 2>&1 | quiet 6
