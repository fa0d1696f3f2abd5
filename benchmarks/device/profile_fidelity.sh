#!/bin/bash
# Issue 15: re-measure the 8B step profile with its idle phase (the simulator's idle_start), then the
# fidelity run on it (engine vs simulator, per-step and per-request traces in the JSON). ~9 min (session 15:
# the profile 2.8 min, cut short by its budget; the fidelity run with react=16 4 min). Tight for one call with
# the larger budget: if it runs out, run `profile` here and the fidelity half as `fidelity.sh` (committed profile).
# `profile_fidelity.sh profile` only measures the profile (~4 min): the committed fidelity JSON's engine
# traces can be re-simulated on any CPU with a new profile (experiments/fidelity.py --resimulate).
# WORKLOADS / SIZE override the fidelity run (default react mmlu agents; mmlu=6 react=16 agents=120); no time is
# left here to measure the client first (fidelity.sh does); ENGINE_PROCESS=1 runs the engine in a process of its
# own (default: in the client's process).
# IMPL=pallas_triton measures the A100 path's profile (step_profile_llama8b_h200_triton.json; use with `profile`).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
SUFFIX=$([ "${IMPL:-auto}" = pallas_triton ] && echo _triton)
# --max-seconds 300: at the preset's 240 the session-15 machine compiled only part of the Hopper path's shapes
# (65% of it goes to the compile pass) and the profile lost its per-bucket table (182 of ~330 points)
# (session 17: 300 s again cut the sweep, now with its agent phase, at 270 points: `PROFILE_SECONDS=480 ... profile`)
PS=${PROFILE_SECONDS:-300}
timeout $((PS + 30)) python3 benchmarks/step_profile.py --preset gpu --model-path .gpu/model8b --load-format dummy \
  --max-seconds $PS --name llama-3.1-8b --attention-backend ${IMPL:-auto} --out $OUT/step_profile_llama8b_h200$SUFFIX.json 2>&1 | quiet 6
[ "$1" = profile ] && exit 0
P=$OUT/step_profile_llama8b_h200.json; [ -f $P ] || P=benchmarks/results/step_profile_llama8b_h200.json
EP=$([ "${ENGINE_PROCESS:-0}" = 1 ] && echo --engine-process || true)  # default: the engine in the client's process
timeout 255 python3 -m experiments.fidelity --model-path .gpu/model8b --load-format dummy --profile $P $EP \
  --workloads ${WORKLOADS:-react mmlu agents} --rates 4 16 --warmup --size ${SIZE:-mmlu=6 react=16 agents=120} \
  --out $OUT/fidelity_llama8b_h200.json 2>&1 | quiet 10
