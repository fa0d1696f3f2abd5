#!/bin/bash
# Issue 15: re-measure the 8B step profile with its idle phase (the simulator's idle_start), then the
# fidelity run on it (engine vs simulator, per-step and per-request traces in the JSON). ~8-9 min (session 14:
# the profile 2.5 min, the fidelity run with react=6 4.8 min).
# `profile_fidelity.sh profile` only measures the profile (~4 min): the committed fidelity JSON's engine
# traces can be re-simulated on any CPU with a new profile (experiments/fidelity.py --resimulate).
# WORKLOADS / SIZE override the fidelity run (default react mmlu agents; mmlu=6 react=16 agents=120).
# IMPL=pallas_triton measures the A100 path's profile (step_profile_llama8b_h200_triton.json; use with `profile`).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
SUFFIX=$([ "${IMPL:-auto}" = pallas_triton ] && echo _triton)
timeout 240 python3 benchmarks/step_profile.py --preset gpu --model-path .gpu/model8b --load-format dummy \
  --name llama-3.1-8b --attention-backend ${IMPL:-auto} --out $OUT/step_profile_llama8b_h200$SUFFIX.json 2>&1 | quiet 6
[ "$1" = profile ] && exit 0
P=$OUT/step_profile_llama8b_h200.json; [ -f $P ] || P=benchmarks/results/step_profile_llama8b_h200.json
timeout 340 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy --profile $P \
  --workloads ${WORKLOADS:-react mmlu agents} --rates 4 16 --warmup --size ${SIZE:-mmlu=6 react=16 agents=120} \
  --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 10
