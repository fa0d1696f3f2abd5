#!/bin/bash
# Issue 15: the simulator against the engine on the same traces (target: within 10%). ~5-6 min for the default
# four workloads; WORKLOADS="hellaswag llm-judge multi-turn-chat" the paper's other three that the simulator
# replays (json decoding needs the grammar, which the simulator has not) in ~3 min.
# WORKLOADS / SIZE override the runs (e.g. WORKLOADS=react SIZE="react=16": more requests for the median that
# a step boundary moves); PROFILE the step profile (default: the committed 8B one). CLIENT (default calibrate):
# how chained calls reach the engine, for the simulator: `calibrate` measures it per chained workload and rate on a
# held-out trace of that workload (seed 1, CAL_SIZE) before its timed run (session 17: the client's inline share
# was 0.96 on the synthetic chained workload, 0.60 / 0.74 in react and 0.38 / 0.42 in tree-of-thought);
# `measure`: once, on the synthetic chained workload (session 16's design). ENGINE_PROCESS=1: the engine in a
# process of its own (the server's setting), default in the client's process as session 15 ran it.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
EP=$([ "${ENGINE_PROCESS:-0}" = 1 ] && echo --engine-process || true)
timeout ${TIMEOUT:-560} python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy $EP --client-turnaround ${CLIENT:-calibrate} \
  --calibration-size ${CAL_SIZE:-react=16 tree-of-thought=4 multi-turn-chat=12} \
  --profile ${PROFILE:-benchmarks/results/step_profile_llama8b_h200.json} \
  --workloads ${WORKLOADS:-react mmlu agents tree-of-thought} --rates 4 16 --warmup \
  --size ${SIZE:-mmlu=6 react=32 agents=120 tree-of-thought=8 hellaswag=20 llm-judge=8 multi-turn-chat=24} --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 30
