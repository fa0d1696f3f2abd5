#!/bin/bash
# Issue 14: the engine's 256 x 128/128 (chunk 8192, the model's context, Hopper path) with and without an
# environment setting that may stop the step's host->device copy from waiting for the step in flight
# (docs/perf.md, "Session 12"), each with its per-step host phases (step_kinds). ~5 min.
# AB_ENV is the setting (default PJRT_GPU_ENABLE_ASYNC_DISPATCH=1); IMPL the attention path (default auto).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
W="--num-prompts 256 --input-len 128 128 --output-len 128 128 --seed 0"
AB_ENV=${AB_ENV:-PJRT_GPU_ENABLE_ASYNC_DISPATCH=1}
for arm in base ab; do
  env $([ $arm = ab ] && echo "$AB_ENV") timeout 170 python3 benchmarks/offline_throughput.py --model .gpu/model8b \
    --load-format dummy $W --datasets random --cache-modes on --max-running-requests 256 \
    --seq-buckets 1 8 32 64 128 256 --chunked-prefill-size 8192 --attention-backend ${IMPL:-auto} --batch1-output 32 \
    --out $OUT/offline_env_${arm}_8b_h200.json 2>&1 | grep -v "cache-on: {" | quiet 5
done
python3 - <<'PY'
import glob, json, os
for f in sorted(glob.glob(os.environ.get("OUT", "/tmp/out") + "/offline_env_*.json")):
    d = json.load(open(f))
    r = d["random/cache-on"]
    k = r["step_kinds"]["decode"]
    ms = {p: round(1e3 * k[p] / max(k["steps"], 1), 2) for p in ("wall_s", "prepare_time", "dispatch_time", "wait_time", "process_time")}
    print(os.path.basename(f), round(r["output_tok_per_s"]), "decode ms/step", ms, "batch1", round(d["batch1"]["ms_per_token_median"], 2))
PY
