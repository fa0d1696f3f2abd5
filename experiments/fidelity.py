"""Simulator fidelity: replay one workload trace through the real Engine and through the simulator.

    python -m experiments.fidelity --model-path benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --profile benchmarks/results/step_profile_llama8b_h200.json --workloads mmlu react agents \\
        --rates 4 16 --out benchmarks/results/fidelity_llama8b_h200.json
    python -m experiments.fidelity --resimulate benchmarks/results/fidelity_llama8b_h200.json \
        --profile NEW_PROFILE.json --out fidelity_new.json    # any CPU: the recorded engine side, a new sim

For each workload and request rate (requests/s of Poisson arrivals, seeded; "offline" = all at t = 0)
the same requests (token ids; greedy, ignore_eos, the workload's output lengths; chained calls are
submitted when the call they wait for returns) run through jaxsgl.Engine and through
jaxsgl.sim.Simulator with the profile's cost model and the same options. An untimed pass of the same
workload runs first and compiles the step shapes it meets (then the cache is flushed; --warmup compiles
every shape up front): compiled_during_run in each row must be 0, or that run timed a compile.
Reported per run: throughput (requests/s and tokens/s over first arrival -> last finish), median and
P99 TTFT, hit rate, steps, and the simulator's relative error on each. A chained call reaches the
engine a client round trip after its predecessor finished, and the engine's loop waits for the calls a
client queues inline (the GIL decides; jaxsgl/sim/client.py): the simulator replays the profile's
measured client (its "client" section: turnarounds and the inline share, from a run of its own; or
--client-turnaround measure: measured first on this engine, on chained_workload), or without one the engine
run's median turnaround as think_time. Each row has the
fraction of chained calls that made the first step dispatched after their predecessor's step ended, on
both sides (chained_next). --engine-process runs the engine as the server does, in a process of its own
(its child's intake thread races the loop for the GIL as an in-process client does).
Each row also has step_model_bias / _mape: the profile's cost model against the engine's own pipelined
steps, whose features an in-process engine records (a per-step check of the step model, where the
per-request figures mix it with queueing). The JSON also keeps, per run, both sides' per-step trace and
per-request records (experiments/fidelity_tables.py: STEP_COLUMNS, FEATURE_COLUMNS, REQ_COLUMNS; `idle`:
dispatched with nothing in flight; the engine's `prepare_time` (schedule + build, before `dispatch`) and
`process_time` (after the results, before `end`): when its loop closed each step's arrival window), times
in seconds from the run's first arrival, one row per line. Needs Engine.request_records(); JAX is
imported only in main().
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxsgl.sim import (ChainedClient, Padding, SimResult, Simulator, batch_features, load_client, load_profile,
                        offline, poisson, summarize)

from experiments.fidelity_tables import (FEATURE_COLUMNS, chained_next, client_turnaround, dumps, step_model,
                                         table_lags, tables)
from experiments.paper_workloads import hellaswag_workload, llm_judge_workload
from experiments.workloads import (Request, Workload, agents_workload, chat_workload, default_tokenize,
                                   mmlu_workload, react_workload, tot_workload, zipf_prefix_workload)

METRICS = ("req_per_s", "total_tok_per_s", "ttft_p50", "ttft_p99", "hit_rate", "steps")


def build_workload(name: str, tokenize: Any, size: int | None = None, seed: int = 0) -> Workload:
    """The fidelity workloads: mmlu, react, agents, tree-of-thought, multi-turn-chat, hellaswag, llm-judge
    (../shared/data) and zipf (synthetic). Another seed picks other questions / conversations (agents,
    llm-judge: the next calls / articles of the file)."""
    if name == "tree-of-thought":
        return tot_workload(tokenize, num_questions=size or 8, seed=seed)
    if name == "multi-turn-chat":
        return chat_workload(tokenize, num_conversations=size or 24, seed=seed)
    if name == "mmlu":
        return mmlu_workload(tokenize, num_subjects=10, per_subject=size or 20, seed=seed)
    if name == "react":
        return react_workload(tokenize, num_questions=size or 16, seed=seed)
    if name == "agents":
        return agents_workload(tokenize, num_calls=size or 300, start=seed * (size or 300), seed=seed)
    if name == "hellaswag":
        return hellaswag_workload(tokenize, num_questions=size or 20, seed=seed)
    if name == "llm-judge":
        return llm_judge_workload(tokenize, num_articles=size or 8, start=seed * (size or 8), seed=seed)
    if name == "zipf":
        return zipf_prefix_workload(num_requests=size or 400, seed=seed)
    raise ValueError(f"unknown workload {name!r}")


def workload_size(items: Sequence[str] | None, name: str) -> int | None:
    """--size: "N" for every workload, or "name=N" items (unnamed workloads keep their default)."""
    for item in items or ():
        key, _, value = item.rpartition("=")
        if key in ("", name):
            return int(value)
    return None


def model_tokenize(model_path: str | None) -> Any:
    """encode() of the model's own tokenizer (the embedded default model's without --model-path)."""
    if model_path is None:
        return default_tokenize()
    from jaxsgl.tokenizer import load_tokenizer
    tok = load_tokenizer(model_path)
    return lambda text: list(tok.encode(text))


def root_arrivals(wl: Workload, rate: float | None, seed: int = 0) -> list[float]:
    n = sum(r.after is None for r in wl.requests)
    return offline(n) if rate is None else poisson(n, rate, seed=seed)


async def _client(engine: Any, wl: Workload, arrivals: Sequence[float], prefix: str) -> None:
    """Submit roots at their arrival times and each chained call when its predecessor returns."""
    children: dict[str, list[Request]] = {}
    for r in wl.requests:
        if r.after is not None:
            children.setdefault(r.after, []).append(r)
    t0 = time.perf_counter()

    async def run(r: Request, at: float | None) -> None:
        if at is not None:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
        await engine.async_generate(input_ids=r.prompt_ids, rid=prefix + r.rid, sampling_params={
            "max_new_tokens": r.max_new_tokens, "temperature": 0.0, "ignore_eos": True})
        await asyncio.gather(*(run(c, None) for c in children.get(r.rid, ())))

    roots = [r for r in wl.requests if r.after is None]
    await asyncio.gather(*(run(r, t) for r, t in zip(roots, arrivals)))


def engine_padding(engine: Any) -> Padding:
    """How an in-process Engine pads its steps (its StepInputBuilder's buckets), as the cost model reads it."""
    b = engine.builder
    return Padding(list(b.token_buckets), list(b.seq_buckets), list(b.page_buckets), b.page_size)


def capture_step_features(engine: Any) -> dict[int, dict]:
    """Record each step's cost-model features (jaxsgl.sim.batch_features, padded as the engine pads) by step
    number, by wrapping an in-process Engine's Scheduler.schedule (runs on its loop thread). Mutates engine."""
    padding = engine_padding(engine)
    feats: dict[int, dict] = {}
    schedule = engine.scheduler.schedule

    def schedule_and_record():
        batch = schedule()
        feats[batch.step] = batch_features(batch, padding)
        return batch
    engine.scheduler.schedule = schedule_and_record
    return feats


def run_engine(engine: Any, wl: Workload, arrivals: Sequence[float], tag: str, warm: bool = True,
               feats: dict[int, dict] | None = None) -> tuple[dict, list[dict], list[dict]]:
    """Warm up (same requests, untimed; warm=False: none), flush the cache, replay (engine: an Engine or
    EngineProcess). Returns (summary over this run's records, its request records with the tag stripped
    from rids, its step trace, with FEATURE_COLUMNS from `feats`: capture_step_features); times on
    perf_counter's clock."""
    if warm:
        asyncio.run(_client(engine, wl, arrivals, f"warm-{tag}-"))
    engine.flush_cache()
    first_step = max((s["step"] for s in engine.trace()), default=-1) + 1
    compiled = engine.get_server_info()["compiled_step_variants"]
    asyncio.run(_client(engine, wl, arrivals, f"{tag}-"))
    engine.wait_idle()  # the step in flight when the last request finished (overlap) completes first
    recs = [{**r, "rid": r["rid"][len(tag) + 1:]} for r in engine.request_records(t0=0.0)
            if r["rid"].startswith(f"{tag}-")]
    steps = engine.trace(first_step)
    for s in steps:
        f = (feats or {}).get(s["step"])
        if f is not None:
            s.update({c: f[c] for c in FEATURE_COLUMNS})
    compiled = engine.get_server_info()["compiled_step_variants"] - compiled
    return {**summarize(recs, steps), "compiled_during_run": compiled}, recs, steps


def run_sim(cost: Any, wl: Workload, arrivals: Sequence[float], **options: Any) -> SimResult:
    """The simulator on the same requests and root arrivals (options: Simulator's)."""
    return Simulator(cost, **options).run(wl.requests, list(arrivals))


def chained_workload(chains: int = 8, calls: int = 10, prefix: int = 256, own: int = 32, max_new: int = 8,
                     background: int = 4, vocab: int = 1000, seed: int = 0) -> Workload:
    """The client measurement's workload (benchmarks/client_profile.py): `chains` chains of `calls` calls
    (prefix + own tokens each) and `background` long decodes that keep the engine from idling."""
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


def measure_client(engine: Any, wl: Workload, arrivals: Sequence[float] | None = None,
                   tag: str = "client") -> tuple[ChainedClient, dict]:
    """Run wl (untimed pass first; roots at `arrivals`, default all at once) and measure how its chained
    calls reached the engine: chained_workload, or a held-out trace of a workload (--client-turnaround
    calibrate)."""
    arrivals = [0.0] * sum(r.after is None for r in wl.requests) if arrivals is None else arrivals
    summary, recs, steps = run_engine(engine, wl, arrivals, tag)
    lags = dict(table_lags(wl, tables(recs, steps)))
    by_rid, after = {r["rid"]: r for r in recs}, {r.rid: r.after for r in wl.requests}
    turn = {rid: by_rid[rid]["arrival_time"] - by_rid[after[rid]]["finish_time"] for rid in lags}
    client = ChainedClient.measured(list(turn.values()), list(lags.values()))
    detail = {"chained_calls": len(lags), "inline_calls": sum(v == 0 for v in lags.values()),
              "compiled_during_run": summary["compiled_during_run"],
              "turnaround_ms_quartiles": [round(float(q) * 1e3, 3) for q in np.percentile(list(turn.values()),
                                                                                       [25, 50, 75])],
              "steps": len(steps), "step_ms_median": round(statistics.median(
                  s["step_time"] for s in steps if s["step_time"] is not None) * 1e3, 2)}
    return client, detail


def sim_client(choice: str, profile: dict, measured: float | None) -> tuple[float, ChainedClient | None]:
    """--client-turnaround: (think_time, client) for the simulator."""
    client = load_client(profile) if choice == "profile" else None
    if client is not None:
        return 0.0, client
    return ((measured or 0.0) if choice in ("profile", "measured", "calibrate") else float(choice)), None


def compare(engine_row: dict, sim_row: dict) -> dict:
    out = {}
    for m in METRICS:
        e, s = engine_row.get(m), sim_row.get(m)
        out[f"engine_{m}"], out[f"sim_{m}"] = e, s
        out[f"err_{m}"] = (s / e - 1.0) if e else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--profile", required=True, help="step profile JSON (benchmarks/step_profile.py)")
    ap.add_argument("--workloads", nargs="+", default=["mmlu", "react", "agents"])
    ap.add_argument("--size", nargs="+", default=None,
                    help="requests / questions / calls per workload: N for all, or name=N items")
    ap.add_argument("--rates", nargs="+", default=["offline"], help="requests/s, or 'offline'")
    ap.add_argument("--max-total-tokens", type=int, default=None)
    ap.add_argument("--max-running-requests", type=int, default=64)
    ap.add_argument("--chunked-prefill-size", type=int, default=512)
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=None,
                    help="padded batch sizes (default: the profile's, so the same shapes were measured)")
    ap.add_argument("--warmup", action="store_true",
                    help="compile every step shape at start (Engine warmup=True; many variants for an 8B model)")
    ap.add_argument("--engine-process", action="store_true",
                    help="the engine in a process of its own (the server's default) instead of this one")
    ap.add_argument("--client-turnaround", default="profile",
                    help="chained calls in the simulator: 'profile' (the profile's client section, else "
                         "'measured'), 'measure' (measure the client on this engine first: chained_workload), "
                         "'calibrate' (per workload with chained calls and rate: measure it on a held-out trace, "
                         "--calibration-seed, of that workload at that rate first), 'measured' (the engine run's "
                         "median turnaround), or a think time (s)")
    ap.add_argument("--calibration-seed", type=int, default=1,
                    help="with --client-turnaround calibrate: the held-out trace's seed (the checked runs use 0)")
    ap.add_argument("--calibration-size", nargs="+", default=None,
                    help="with --client-turnaround calibrate: the held-out traces' sizes (as --size; default --size)")
    ap.add_argument("--resimulate", default=None, metavar="FIDELITY.json",
                    help="no engine: keep that run's engine traces, simulate them again with --profile (the same "
                         "requests, arrivals and options; exact on any CPU), and write rows and sim traces to --out")
    ap.add_argument("--out", default="fidelity.json")
    args = ap.parse_args()
    if args.resimulate:
        return resimulate(Path(args.resimulate), args.profile, args.model_path, Path(args.out))

    if args.engine_process:
        from jaxsgl.engine.engine_process import EngineProcess as Engine  # JAX in the child only
    else:
        from jaxsgl.engine.engine import Engine  # JAX from here on

    opts = dict(max_running_requests=args.max_running_requests, chunked_prefill_size=args.chunked_prefill_size,
                max_total_tokens=args.max_total_tokens)
    cost = load_profile(args.profile)
    profile = json.loads(Path(args.profile).read_text())
    seq_buckets = args.seq_buckets or profile.get("engine_options", {}).get("seq_buckets")
    if seq_buckets:
        seq_buckets = [b for b in seq_buckets if b < args.max_running_requests]
    tokenize = model_tokenize(args.model_path)
    rows, runs = [], []
    # a compile inside a measured run would be timed: the untimed pass compiles what it meets, --warmup all shapes
    with Engine(args.model_path, load_format=args.load_format, attention_backend=args.attention_backend,
                skip_tokenizer_init=True, seq_buckets=seq_buckets, warmup=args.warmup, **opts) as eng:
        opts["max_total_tokens"] = eng.get_load()["max_total_num_tokens"]  # the sim's pool = the engine's
        feats = None if args.engine_process else capture_step_features(eng)
        runs_meta = {"sim_options": dict(opts)}
        measured_client = None
        if args.client_turnaround == "measure":  # its own workload, not the ones it is then checked on
            measured_client, detail = measure_client(eng, chained_workload(vocab=min(1000, eng.cfg.vocab_size)))
            print(json.dumps({"client": measured_client.to_dict(), **detail}), flush=True)
        for name in args.workloads:
            wl = build_workload(name, tokenize, workload_size(args.size, name))
            for rate_s in args.rates:
                rate = None if rate_s == "offline" else float(rate_s)
                arr = root_arrivals(wl, rate)
                calibration = None
                if args.client_turnaround == "calibrate" and any(r.after is not None for r in wl.requests):
                    seed = args.calibration_seed
                    held = build_workload(name, tokenize, workload_size(args.calibration_size or args.size, name),
                                          seed=seed)
                    cal_client, detail = measure_client(eng, held, root_arrivals(held, rate, seed=seed),
                                                        f"calibrate-{name}-{rate_s}")
                    calibration = {"seed": seed, "requests": len(held.requests), **detail}
                    print(json.dumps({"workload": name, "rate": rate_s, "client": cal_client.to_dict(),
                                      **calibration}), flush=True)
                # the held-out passes ran this workload's shapes at this rate: no second untimed pass
                e, e_recs, e_steps = run_engine(eng, wl, arr, f"{name}-{rate_s}", warm=calibration is None,
                                                feats=feats)
                turn = client_turnaround(wl, e_recs)
                if calibration is not None:
                    think, client = 0.0, cal_client
                elif measured_client is not None:
                    think, client = 0.0, measured_client
                else:
                    think, client = sim_client(args.client_turnaround, profile, turn)
                s = run_sim(cost, wl, arr, think_time=think, client=client, **opts)
                run = {**runs_meta, "workload": name, "rate": rate_s, "client_turnaround_s": turn,
                       "sim_think_time_s": think, "sim_client": client.to_dict() if client else None,
                       "client_calibration": calibration,
                       "sim_idle_start_s": getattr(cost, "idle_start", 0.0),
                       "engine": tables(e_recs, e_steps), "sim": tables(s.requests, s.steps)}
                row = {"workload": name, "rate": rate_s, "requests": len(wl.requests),
                       "compiled_during_run": e["compiled_during_run"], **compare(e, s.summary),
                       **chained_next(wl, run), **step_model(run, cost)}
                rows.append(row)
                runs.append(run)
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
                Path(args.out).write_text(dumps({"args": vars(args), "rows": rows, "runs": runs}) + "\n")
    print_worst(rows)


def print_worst(rows: Sequence[dict]) -> None:
    worst = max((abs(r[f"err_{m}"]) for r in rows for m in ("req_per_s", "ttft_p50", "ttft_p99")), default=0.0)
    print(f"worst |error| over throughput, TTFT p50/p99: {worst:.1%}")


def resimulated_client(run: dict, profile_client: ChainedClient | None) -> ChainedClient | None:
    """The client a re-simulation of a recorded run uses: the run's own where it was calibrated on a held-out
    trace of its workload and rate, else the new profile's, else the one the run was simulated with."""
    recorded = ChainedClient.from_dict(run["sim_client"]) if run.get("sim_client") else None
    return recorded if run.get("client_calibration") else (profile_client or recorded)


def resimulate(recorded: Path, profile: str, model_path: str | None, out: Path) -> None:
    """--resimulate: the recorded run's engine side (summary and traces) with a new simulation of each
    run under `profile` (the same workload, seeded arrivals, think time and options)."""
    data = json.loads(recorded.read_text())
    args, cost, tokenize = data["args"], load_profile(profile), model_tokenize(model_path)
    profile_client = load_client(json.loads(Path(profile).read_text()))
    for row, run in zip(data["rows"], data["runs"]):
        wl = build_workload(row["workload"], tokenize, workload_size(args["size"], row["workload"]))
        arr = root_arrivals(wl, None if row["rate"] == "offline" else float(row["rate"]))
        opts = run.get("sim_options") or dict(max_running_requests=args["max_running_requests"],
                                              chunked_prefill_size=args["chunked_prefill_size"],
                                              max_total_tokens=args["max_total_tokens"])
        if len(wl.requests) != row["requests"]:
            raise ValueError(f"{row['workload']}: {len(wl.requests)} requests, the recording has {row['requests']} "
                             "(another tokenizer? pass the recording's --model-path)")
        client = resimulated_client(run, profile_client)
        s = run_sim(cost, wl, arr, think_time=run["sim_think_time_s"], client=client, **opts)
        engine = {m: row[f"engine_{m}"] for m in METRICS}
        row.update(compare(engine, s.summary))
        run.update(sim_idle_start_s=getattr(cost, "idle_start", 0.0), sim=tables(s.requests, s.steps))
        if client is not None:
            run["sim_client"] = client.to_dict()
        row.update(chained_next(wl, run), **step_model(run, cost))
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    data["resimulated"] = {"from": str(recorded), "profile": profile, "argv": sys.argv,
                           "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out.write_text(dumps(data) + "\n")
    print_worst(data["rows"])


if __name__ == "__main__":
    main()
