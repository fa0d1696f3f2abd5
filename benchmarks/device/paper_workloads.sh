#!/bin/bash
# Issue 15: the paper's eight workloads through the 8B engine, radix cache on then off (offline replay,
# experiments/paper_workloads.py; the notebook draws them next to the simulation of the same runs). Every step
# shape is compiled when each engine starts (--warmup), so no replay is doubled by an untimed pass; each row is
# written as it finishes. WORKLOADS / SIZE narrow the run (e.g. WORKLOADS="mmlu react" when a call runs out).
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
timeout 560 python3 -m experiments.paper_workloads --engine --model-path .gpu/model8b --load-format dummy \
  --workloads ${WORKLOADS:-mmlu hellaswag tree-of-thought multi-turn-chat react agents llm-judge json} \
  --size ${SIZE:-gpu} --warmup --warm none --seq-buckets 1 8 32 64 \
  --out $OUT/paper_workloads_llama8b_h200.json 2>&1 | quiet 40
