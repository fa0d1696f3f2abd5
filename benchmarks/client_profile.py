"""Client profile: how a client's chained calls reach the engine, for the simulator (jaxsgl/sim/client.py).

    python benchmarks/client_profile.py --into benchmarks/results/step_profile_smollm2_cpu.json
    python benchmarks/client_profile.py --model-path .gpu/model8b --load-format dummy \\
        --into benchmarks/results/step_profile_llama8b_h200.json      # the H200 profile's client section

--chains chains of --calls calls each (a call is sent when the previous one in its chain returns, as an
agent's are) run through the Engine from an asyncio client in this process (experiments/fidelity.py's
client; --engine-process: the engine in a process of its own, as the server runs it) while --background
requests decode, so that the engine never idles between a call and the next, as under load. Each call is
a shared --prefix plus --own tokens of its own, --max-new-tokens (+0-6, so that chains drift apart)
greedy outputs. The same workload runs once
untimed first (compiles). For every chained call: its turnaround (arrival - its predecessor's finish) and
whether it made the first step dispatched after its predecessor's step ended (chained_lags 0: queued
inline, the loop waited for it). ChainedClient.measured(...) of them is written as the "client" section
of --into (a step profile; nothing else in it changes) or to --out. Session 16 measured it on the CPU only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.fidelity import run_engine, tables  # noqa: E402
from experiments.workloads import Request, Workload  # noqa: E402
from jaxsgl.sim import ChainedClient, chained_lags  # noqa: E402


def chained_workload(chains: int, calls: int, prefix: int, own: int, max_new: int, background: int,
                     vocab: int = 1000, seed: int = 0) -> Workload:
    """`chains` chains of `calls` calls (prefix + own tokens each) and `background` long decodes."""
    rng = np.random.default_rng(seed)
    ids = lambda n: [int(x) for x in rng.integers(10, vocab, n)]  # noqa: E731
    shared, reqs = ids(prefix), []
    for c in range(chains):
        for j in range(calls):
            # lengths differ between calls, so the chains' calls finish in different steps (as an agent's do)
            reqs.append(Request(f"chain{c}.{j}", shared + ids(own), max_new + (3 * c + j) % 7,
                                after=f"chain{c}.{j - 1}" if j else None))
    steps_per_call = max_new + 8  # a prefill step, the outputs, the client's turnaround
    reqs += [Request(f"background{b}", ids(prefix), calls * steps_per_call) for b in range(background)]
    return Workload("chained", reqs)


def measure(engine, wl: Workload) -> tuple[ChainedClient, dict]:
    """Run wl (untimed pass first) and measure its chained calls."""
    summary, recs, steps = run_engine(engine, wl, [0.0] * sum(r.after is None for r in wl.requests), "client")
    t = tables(recs, steps)
    reqs = [dict(zip(t["requests"]["columns"], r)) for r in t["requests"]["rows"]]
    rows = [dict(zip(t["steps"]["columns"], r)) for r in t["steps"]["rows"]]
    by_rid = {r["rid"]: r for r in reqs}
    pairs = [(r.rid, r.after) for r in wl.requests if r.after is not None]
    lags = dict(chained_lags(pairs, reqs, [(s["step"], s["dispatch"], s["end"]) for s in rows if s["end"] is not None]))
    turn = {rid: by_rid[rid]["arrival_time"] - by_rid[after]["finish_time"] for rid, after in pairs if rid in lags}
    client = ChainedClient.measured([turn[r] for r in lags], list(lags.values()))
    detail = {"chained_calls": len(lags), "inline_calls": sum(v == 0 for v in lags.values()),
              "compiled_during_run": summary["compiled_during_run"],
              "turnaround_ms_quartiles": [round(float(q) * 1e3, 3) for q in np.percentile(list(turn.values()),
                                                                                       [25, 50, 75])],
              "steps": len(rows), "step_ms_median": round(statistics.median(
                  s["end"] - s["dispatch"] for s in rows if s["end"] is not None) * 1e3, 2)}
    return client, detail


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--engine-process", action="store_true", help="the engine in a process of its own")
    ap.add_argument("--chains", type=int, default=8)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--prefix", type=int, default=256)
    ap.add_argument("--own", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--background", type=int, default=4)
    ap.add_argument("--max-running-requests", type=int, default=64)
    ap.add_argument("--into", default=None, help="a step profile JSON: write its \"client\" section")
    ap.add_argument("--out", default=None, help="write the client model here (default client_profile.json)")
    args = ap.parse_args()
    if args.engine_process:
        from jaxsgl.engine.engine_process import EngineProcess as Engine
    else:
        from jaxsgl.engine.engine import Engine

    t0 = time.perf_counter()
    with Engine(args.model_path, load_format=args.load_format, attention_backend=args.attention_backend,
                skip_tokenizer_init=True, max_running_requests=args.max_running_requests) as eng:
        wl = chained_workload(args.chains, args.calls, args.prefix, args.own, args.max_new_tokens, args.background,
                              vocab=min(1000, eng.cfg.vocab_size))
        client, detail = measure(eng, wl)
    section = {**client.to_dict(), "measured": {**detail, "argv": sys.argv, "engine_process": args.engine_process,
                                                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}}
    print("| chained calls | inline | inline turnaround ms | other turnaround ms | median step ms |\n|---|---|---|---|---|")
    print(f"| {detail['chained_calls']} | {client.inline_probability:.2f} | {client.inline_turnaround * 1e3:.3f} | "
          f"{client.turnaround * 1e3:.3f} | {detail['step_ms_median']} |")
    if args.into:
        prof = json.loads(Path(args.into).read_text())
        prof["client"] = section
        Path(args.into).write_text(json.dumps(prof, indent=1))
    out = args.out or (None if args.into else "client_profile.json")
    if out:
        Path(out).write_text(json.dumps(section, indent=1))
    print(f"wrote {args.into or ''} {out or ''} in {time.perf_counter() - t0:.0f}s".replace("  ", " "), flush=True)


if __name__ == "__main__":
    main()
