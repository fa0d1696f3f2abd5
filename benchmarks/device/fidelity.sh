#!/bin/bash
# Issue 15: the simulator against the engine on the same traces (target: within 10%). ~9 min.
# WORKLOADS / SIZE override the runs (e.g. WORKLOADS=react SIZE="react=16": more requests for the median that
# a step boundary moves); PROFILE the step profile (default: the committed 8B one).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 540 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy \
  --profile ${PROFILE:-benchmarks/results/step_profile_llama8b_h200.json} --workloads ${WORKLOADS:-mmlu react agents} \
  --rates 4 16 --warmup --size ${SIZE:-mmlu=6 react=6 agents=120} --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 30
