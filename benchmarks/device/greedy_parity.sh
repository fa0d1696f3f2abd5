#!/bin/bash
# Greedy tokens of the 8B engine (dummy weights, bf16) under a setting off and on (PARITY_ENV, default
# JAXSGL_PINNED_INPUTS: run_async's inputs in page-locked memory; several names, space-separated, are set
# together), each with overlap scheduling on and off.
# The setting must change no token. Overlap on vs off changes the batches a row is computed in, so bf16 rows
# may differ where the top two logits are within rounding: the first differing token's top-2 gap is printed.
# 64 prompts of 40-200 tokens x 48 new tokens, 32 running. ~2 min.
cd "$(dirname "$0")/../.." && source benchmarks/device/_env.sh
cat > /tmp/parity.py <<'PY'
import json, sys
import numpy as np
from jaxsgl import Engine
rng = np.random.default_rng(0)
prompts = [rng.integers(100, 120000, int(n)).tolist() for n in rng.integers(40, 200, 64)]
out = {}
for overlap in (True, False):
    eng = Engine(".gpu/model8b", load_format="dummy", skip_tokenizer_init=True, max_running_requests=32,
                 chunked_prefill_size=512, seq_buckets=[1, 8, 32], disable_overlap_schedule=not overlap)
    res = eng.generate(input_ids=prompts, sampling_params={"temperature": 0, "max_new_tokens": 48, "ignore_eos": True},
                       return_logprob=True, top_logprobs_num=2)
    out["overlap" if overlap else "sync"] = [
        {"ids": r["output_ids"], "top2": [[t[0][0], t[1][0]] for t in r["meta_info"]["output_top_logprobs"]]}
        for r in res]
    eng.shutdown()
json.dump(out, open(sys.argv[1], "w"))
PY
E=${PARITY_ENV:-JAXSGL_PINNED_INPUTS}
for v in 0 1; do env $(for e in $E; do printf "%s=%s " $e $v; done) timeout 200 python3 /tmp/parity.py $OUT/parity_$v.json 2>&1 | quiet 3; done
python3 - <<PY
import json
o = "$OUT"
runs = {f"$E={v}/{k}": t for v in (0, 1) for k, t in json.load(open(f"{o}/parity_{v}.json")).items()}
ref = runs["$E=0/sync"]
summary = {}
for name, rows in runs.items():
    same = sum(a["ids"] == b["ids"] for a, b in zip(rows, ref))
    gaps = []
    for a, b in zip(rows, ref):
        d = next((j for j, (p, q) in enumerate(zip(a["ids"], b["ids"])) if p != q), None)
        if d is not None:
            gaps.append(round(b["top2"][d][0] - b["top2"][d][1], 4))
    summary[name] = {"identical": same, "of": len(ref), "top2_gap_at_first_difference": gaps}
    print(f"{name:<28} {same}/{len(ref)} token-identical to $E=0/sync; top-2 logprob gap where they part: {gaps}")
json.dump(summary, open(f"{o}/greedy_parity_8b_h200.json", "w"), indent=1)
PY
