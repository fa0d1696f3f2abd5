#!/bin/bash
# Issue 15: the simulator against the engine on the same traces (target: within 10%). ~10 min.
# WORKLOADS / SIZE override the runs (e.g. WORKLOADS=react SIZE="react=16": more requests for the median that
# a step boundary moves); PROFILE the step profile (default: the committed 8B one), to which
# benchmarks/client_profile.py first adds the measured client (how chained calls reach the engine: ~1-2 min,
# its own compiles included), written with the run to $OUT. ENGINE_PROCESS=1: the engine in a process of its
# own (the server's setting) for both; default in the client's process, as session 15 ran it.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
EP=$([ "${ENGINE_PROCESS:-0}" = 1 ] && echo --engine-process || true)
P=$OUT/step_profile_llama8b_h200.json
cp ${PROFILE:-benchmarks/results/step_profile_llama8b_h200.json} $P
timeout 200 python3 benchmarks/client_profile.py --model-path .gpu/model8b --load-format dummy $EP --into $P 2>&1 | quiet 6
timeout 480 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy $EP --profile $P \
  --workloads ${WORKLOADS:-react mmlu agents tree-of-thought} --rates 4 16 --warmup \
  --size ${SIZE:-mmlu=6 react=32 agents=120 tree-of-thought=8} --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 30
