#!/bin/bash
# Issue 15: the simulator against the engine on the same traces (target: within 10%). ~9 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 540 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy \
  --profile benchmarks/results/step_profile_llama8b_h200.json --workloads mmlu react agents --rates 4 16 \
  --warmup --size mmlu=6 react=6 agents=120 --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 30
