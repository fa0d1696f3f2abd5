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
`python -m experiments.fidelity --client-turnaround measure` does the same on its own engine first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.fidelity import chained_workload, measure_client  # noqa: E402


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
        client, detail = measure_client(eng, wl)
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
