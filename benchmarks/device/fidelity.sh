#!/bin/bash
# Issue 15: the simulator against the engine on the same traces (target: within 10%). ~10 min.
# WORKLOADS / SIZE override the runs (e.g. WORKLOADS=react SIZE="react=16": more requests for the median that
# a step boundary moves); PROFILE the step profile (default: the committed 8B one). The engine first measures the
# client on a workload of its own (how chained calls reach it: --client-turnaround measure, ~1 min), then runs the
# workloads; ENGINE_PROCESS=1: the engine in a process of its own (the server's setting), default in the client's
# process as session 15 ran it.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
EP=$([ "${ENGINE_PROCESS:-0}" = 1 ] && echo --engine-process || true)
timeout 560 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy $EP --client-turnaround measure \
  --profile ${PROFILE:-benchmarks/results/step_profile_llama8b_h200.json} \
  --workloads ${WORKLOADS:-react mmlu agents tree-of-thought} --rates 4 16 --warmup \
  --size ${SIZE:-mmlu=6 react=32 agents=120 tree-of-thought=8} --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 30
