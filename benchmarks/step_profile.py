"""Step profile: sweep step shapes through the real Engine, fit the simulator's step-cost model, write JSON.

    python benchmarks/step_profile.py --preset cpu --out benchmarks/results/step_profile_smollm2_cpu.json
    python benchmarks/step_profile.py --preset gpu --model-path benchmarks/configs/llama-3.1-8b \\
        --load-format dummy --out benchmarks/results/step_profile_llama8b_h200.json
    python benchmarks/step_profile.py --preset gpu --model-path benchmarks/configs/llama-3.1-8b \\
        --load-format dummy --attention-backend pallas_triton --out benchmarks/results/step_profile_llama8b_h200_triton.json
    python benchmarks/step_profile.py --refit benchmarks/results/step_profile_llama8b_h200.json  # no engine

Phases (every request greedy, ignore_eos; the cache is flushed between configurations):
  prefill  one request of each --prefill-lens tokens, max_new_tokens 1 (chunked by the engine)
  decode   for each (batch B, context C): B requests sharing a C-token prefix plus 16 own tokens,
           --decode-steps outputs each (the prefix is prefilled once, the others extend it: extend
           points with long contexts; then B-sequence decode steps at context ~C)
  idle     one request of --idle-prefix tokens (not measured), then --idle-repeats times: a pause of
           --idle-pause s (the engine idles, as between requests at a low rate), one request of the
           prefix plus N own tokens (--idle-lens), max_new_tokens 1: a step dispatched to an idle engine
  stream   --stream-background requests of --idle-prefix tokens decode while --stream-requests requests
           of each --stream-lens tokens arrive one every other step: steady mixed steps (a prefill that
           shares its step with decodes, the pipeline never drained), the shape of serving's prefills
  agent    the stream phase over a cached prefix: the background requests share --agent-prefix tokens
           (decodes at that context) and each arrival is that prefix plus --agent-lens own tokens (an
           extend over a long cached prefix): the shape of an agent's or a chat's next call
The sweep runs twice: the first pass compiles every step shape and is discarded. For each step of
the measured pass it records the batch's features (jaxsgl.sim.cost_model.batch_features, captured
by wrapping Engine.scheduler.schedule), `device` = StepTrace.step_time (ModelRunner dispatch to
results on the host) and `wall` = end_time minus the previous step's end_time (the engine loop's
period: what the simulated clock advances by; for the first step of a configuration, minus the
time the requests were submitted to the idle engine); `idle` marks a step dispatched with nothing in
flight (each configuration's first step and the idle phase's steps).
Then it fits every candidate feature set (cost_model.CANDIDATE_FEATURES) to both targets and keeps
the lowest cross-validated error; the wall model is fitted on the pipelined steps and its idle_start
(the extra of a step dispatched to an idle engine) on the idle phase (cost_model.fit_profile).
--refit PROFILE.json redoes the fit from a profile's stored points (no engine); --idle-start S then
sets idle_start by hand (e.g. for a profile without an idle phase), recorded under "refit".
--max-seconds bounds both passes (configurations alternate small and large so a cut run still spans
the shapes; the fit uses what was measured).
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.fidelity import capture_step_features, engine_padding  # noqa: E402
from jaxsgl.sim.cost_model import CANDIDATE_FEATURES, Padding, fit_profile  # noqa: E402

PRESETS = {
    "cpu": dict(prefill_lens=[16, 64, 128, 256, 512, 1024], decode=[(1, 64), (1, 256), (1, 1024), (4, 64), (4, 256),
                (4, 1024), (16, 64), (16, 256), (32, 64), (32, 256)], decode_steps=6, max_running_requests=32,
                chunked_prefill_size=512, seq_buckets=[1, 4, 8, 16, 32], idle_lens=[16, 64], idle_prefix=64,
                stream_lens=[64, 256], agent_lens=[], agent_prefix=512),
    "gpu": dict(prefill_lens=[64, 256, 512, 1024, 2048, 4096, 8192],
                decode=[(b, c) for c in (256, 1024, 4096) for b in (1, 8, 32, 64, 128, 256)],
                decode_steps=16, max_running_requests=256, chunked_prefill_size=2048,
                seq_buckets=[1, 8, 32, 64, 128, 256], max_seconds=240.0, idle_lens=[16, 64, 256],
                idle_prefix=256, stream_lens=[64, 128, 256, 512, 1024, 2048], agent_lens=[16, 64, 256, 512],
                agent_prefix=2048),
}


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


def device_name() -> str:
    import jax
    d = jax.devices()[0]
    if d.platform == "cpu":
        try:
            model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
        except (OSError, StopIteration):
            model = platform.processor()
        return f"cpu: {model} ({os.cpu_count()} cores)"
    return f"{d.platform}: {d.device_kind} x{jax.device_count()}"


def run_config(eng, prompts: list[list[int]], max_new: int, feats: dict[int, dict], flush: bool = True) -> list[dict]:
    """Generate, then join the new trace records with their captured features."""
    if flush:
        eng.flush_cache()
    first = eng.scheduler.step + 1
    t_submit = time.perf_counter()
    eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": max_new, "temperature": 0.0,
                                                    "ignore_eos": True})
    recs = [r for r in eng.trace() if r["step"] >= first and r["num_seqs"]]
    points, prev_end = [], t_submit  # the first step's period starts at submission (the loop was idle)
    for r in recs:
        f = feats.get(r["step"])
        if f is not None and r["step_time"] is not None:
            wall = None if prev_end is None else r["end_time"] - prev_end
            points.append({"step": r["step"], **f, "device": r["step_time"], "wall": wall,
                           "num_prefill_seqs": r["num_prefill_seqs"], "idle": r is recs[0]})
        prev_end = r["end_time"]
    return points


def run_idle(eng, prefix: list[int], suffixes: list[list[int]], pause: float, feats: dict[int, dict]) -> list[dict]:
    """The idle phase of one size: the prefix once (cached, not measured), then per suffix a pause
    and one request prefix + suffix (one step, dispatched to the idle engine)."""
    eng.flush_cache()
    run_config(eng, [prefix], 1, feats)
    points = []
    for own in suffixes:
        time.sleep(pause)
        points += run_config(eng, [prefix + own], 1, feats, flush=False)[:1]
    return points


def run_stream(eng, background: list[list[int]], prompts: list[list[int]], feats: dict[int, dict],
               timeout: float = 120.0) -> list[dict]:
    """Mixed steps in steady state, as in serving: `background` requests decode while `prompts` arrive
    one every other step, each prefilled in a step it shares with the decodes (the pipeline never
    drains). Returns the points of the mixed steps after the background's prefill."""
    eng.flush_cache()
    finished = threading.Semaphore(0)

    def on_event(rid: str, kind: str, payload) -> None:  # the engine's loop thread
        if kind != "increment":
            finished.release()
    params = {"temperature": 0.0, "ignore_eos": True}
    first = eng.scheduler.step + 1
    deadline = time.monotonic() + timeout

    def wait_for(pred) -> None:  # until a step traced from now on satisfies pred (bounded by deadline)
        since = eng.scheduler.step + 1
        while time.monotonic() < deadline and not any(pred(r) for r in eng.trace(since)):
            time.sleep(0.0005)
    eng.submit(on_event, input_ids=background,
               sampling_params={**params, "max_new_tokens": 3 * len(prompts) + 4})
    wait_for(lambda r: r["num_seqs"] and not r["num_prefill_seqs"])  # every background request decodes
    start = eng.scheduler.step + 1
    for ids in prompts:
        eng.submit(on_event, input_ids=ids, sampling_params={**params, "max_new_tokens": 1})
        wait_for(lambda r: r["num_prefill_seqs"] > 0)  # its prefill step (a chunked prompt: its first)
        wait_for(lambda r: r["num_seqs"] > 0)  # and one more step before the next arrives
    for _ in range(len(background) + len(prompts)):
        if not finished.acquire(timeout=max(deadline - time.monotonic(), 0.0)):
            raise TimeoutError(f"stream phase: requests unfinished after {timeout}s")
    recs = [r for r in eng.trace() if r["step"] >= first and r["num_seqs"]]
    points, prev_end = [], None
    for r in recs:
        f = feats.get(r["step"])
        if (r["step"] >= start and r["num_prefill_seqs"] and prev_end is not None and f is not None
                and r["step_time"] is not None):  # the mixed steps (decode-only shapes: the decode phase)
            points.append({"step": r["step"], **f, "device": r["step_time"], "wall": r["end_time"] - prev_end,
                           "num_prefill_seqs": r["num_prefill_seqs"], "idle": False})
        prev_end = r["end_time"]
    return points


def configs_of(args) -> list[tuple[str, int, int]]:
    """(kind, batch, length) per configuration, alternating small and large ones so that a run cut
    short by --max-seconds still spans the shapes."""
    cfgs = sorted([("prefill", 1, n) for n in args.prefill_lens] + [("decode", b, c) for b, c in args.decode]
                  + [("idle", args.idle_repeats, n) for n in args.idle_lens]
                  + [("stream", args.stream_background, n) for n in args.stream_lens]
                  + [("agent", args.stream_background, n) for n in args.agent_lens], key=lambda k: k[1] * k[2])
    out = []
    while cfgs:
        out.append(cfgs.pop(0))
        if cfgs:
            out.append(cfgs.pop())
    return out


def sweep(eng, args, configs, feats: dict[int, dict], rng: np.random.Generator,
          deadline: float | None) -> tuple[list[dict], list]:
    """Run `configs` (until `deadline`); returns (points, the configurations that ran)."""
    vocab = eng.cfg.vocab_size
    rand = lambda n: rng.integers(10, vocab, n).tolist()
    points, done = [], []
    for cfg in configs:
        kind, batch, length = cfg  # prefill: (1, prompt length); decode: (batch, context); idle: (repeats, own)
        name = f"{kind}:{1 if kind == 'idle' else batch}x{length}"
        if deadline is not None and time.perf_counter() > deadline:
            print(f"  --max-seconds reached: skipping {name} and later", flush=True)
            break
        need = {"prefill": length + 1, "idle": args.idle_prefix + length + 1, "stream": max(length + 1, args.idle_prefix
                + 3 * args.stream_requests + 4), "agent": args.agent_prefix + max(length + 1, 16 + 3 * args.stream_requests
                + 4)}.get(kind, length + 16 + args.decode_steps)
        if need > eng.context_len:
            print(f"  {name}: skipped ({need} tokens > context length {eng.context_len})", flush=True)
            continue
        t0 = time.perf_counter()
        if kind == "prefill":
            pts = run_config(eng, [rand(length)], 1, feats)
        elif kind == "stream":
            background = [rand(args.idle_prefix) for _ in range(batch)]
            pts = run_stream(eng, background, [rand(length) for _ in range(args.stream_requests)], feats)
        elif kind == "agent":
            prefix = rand(args.agent_prefix)
            pts = run_stream(eng, [prefix + rand(16) for _ in range(batch)],
                             [prefix + rand(length) for _ in range(args.stream_requests)], feats)
        elif kind == "idle":
            pts = run_idle(eng, rand(args.idle_prefix), [rand(length) for _ in range(batch)], args.idle_pause, feats)
        else:
            prefix = rand(length)
            pts = run_config(eng, [prefix + rand(16) for _ in range(batch)], args.decode_steps, feats)
        for p in pts:
            p["config"] = name
        points += pts
        done.append(cfg)
        print(f"  {name}: {len(pts)} steps, {time.perf_counter() - t0:.1f}s", flush=True)
    return points, done


def fit_costs(points: list[dict], padding: Padding) -> tuple[dict, dict]:
    """(cost, fits) of the profile JSON: cost_model.fit_profile of both targets, printed."""
    cost, choice = {}, {}
    for target in ("wall", "device"):
        best, fit, fits = fit_profile(points, target, padding=padding)
        cost[target] = fit.to_dict()
        choice[target] = {"best": best, "all": {n: f["fit"] for n, f in fits.items()}}
        f = fit.fit
        idle = (f" + {fit.idle_start * 1e3:.2f} ms idle start ({f['idle_points']} idle points)"
                if target == "wall" else "")
        print(f"{target}: {best} {fit.intercept * 1e3:.2f} ms + "
              + " + ".join(f"{c:.3g}*{n}" for n, c in fit.coef.items()) + idle
              + f"  (n={f['n']}, mape {f['mape']:.1%}, cv {f['cv_mape']:.1%}, p90 {f['p90_ape']:.1%}, "
              f"max {f['max_ape']:.1%})", flush=True)
    return cost, choice


def refit(path: str, out: str | None, idle_start: float | None, note: str | None = None) -> None:
    """--refit: redo the fit of a profile JSON from its stored points (no engine)."""
    prof = json.loads(Path(path).read_text())
    padding = Padding(**prof["padding"]) if prof.get("padding") else None
    prof["cost"], prof["fits"] = fit_costs(prof["points"], padding)
    prof["refit"] = {"created": datetime.datetime.now().isoformat(timespec="seconds"), "argv": sys.argv}
    if idle_start is not None:
        prof["cost"]["wall"]["idle_start"] = idle_start
        prof["refit"]["idle_start_set_by_hand"] = idle_start
        if note:
            prof["refit"]["note"] = note
        print(f"wall: idle_start set to {idle_start * 1e3:.2f} ms (--idle-start)", flush=True)
    Path(out or path).write_text(json.dumps(prof, indent=1))
    print(f"wrote {out or path}: {len(prof['points'])} points", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--model-path", default=None, help="default: the embedded SmolLM2-135M-Instruct")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--max-total-tokens", type=int, default=None)
    ap.add_argument("--max-running-requests", type=int, default=None)
    ap.add_argument("--chunked-prefill-size", type=int, default=None)
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=None)
    ap.add_argument("--prefill-lens", type=int, nargs="+", default=None)
    ap.add_argument("--decode", type=str, nargs="+", default=None, help="BxC pairs, e.g. 8x256 32x1024")
    ap.add_argument("--decode-steps", type=int, default=None)
    ap.add_argument("--disable-overlap-schedule", action="store_true")
    ap.add_argument("--idle-lens", type=int, nargs="+", default=None, help="own tokens of the idle phase's requests")
    ap.add_argument("--idle-prefix", type=int, default=None, help="cached prefix tokens of the idle phase's requests")
    ap.add_argument("--idle-repeats", type=int, default=3, help="idle-phase requests per size")
    ap.add_argument("--idle-pause", type=float, default=0.05, help="seconds the engine idles before each")
    ap.add_argument("--stream-lens", type=int, nargs="+", default=None,
                    help="prompt tokens of the stream phase's requests (each prefilled in a step shared with "
                         "--stream-background decoding requests of --idle-prefix tokens; steady mixed steps)")
    ap.add_argument("--stream-background", type=int, default=8, help="decoding requests of the stream and agent phases")
    ap.add_argument("--agent-lens", type=int, nargs="+", default=None,
                    help="own tokens of the agent phase's arrivals (over the --agent-prefix their background shares)")
    ap.add_argument("--agent-prefix", type=int, default=None, help="cached prefix tokens of the agent phase")
    ap.add_argument("--stream-requests", type=int, default=6, help="stream-phase requests per size")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="budget of both passes after engine start (the compile pass gets 65%%; the measured pass "
                         "reruns what it compiled); the gpu preset sets 240")
    ap.add_argument("--repeats", type=int, default=1, help="measured passes (all points are fitted; for noisy hosts)")
    ap.add_argument("--name", default=None, help="model name in the JSON (default: the model directory)")
    ap.add_argument("--out", default=None, help="default step_profile.json; with --refit: the profile itself")
    ap.add_argument("--refit", default=None, metavar="PROFILE.json", help="refit a profile's stored points; no engine")
    ap.add_argument("--idle-start", type=float, default=None, help="with --refit: idle_start (s) to store")
    ap.add_argument("--note", default=None, help="with --refit: where --idle-start comes from (stored)")
    args = ap.parse_args()
    if args.refit:
        return refit(args.refit, args.out, args.idle_start, args.note)
    args.out = args.out or "step_profile.json"
    preset = PRESETS[args.preset]
    for key, val in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, val)
    if isinstance(args.decode[0], str):
        args.decode = [tuple(int(x) for x in bc.lower().split("x")) for bc in args.decode]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    load_before = uptime()

    import jax
    from jaxsgl.engine.engine import Engine

    t_start = time.perf_counter()
    eng = Engine(args.model_path, load_format=args.load_format, dtype=args.dtype, skip_tokenizer_init=True,
                 attention_backend=args.attention_backend, page_size=args.page_size,
                 max_total_tokens=args.max_total_tokens, max_running_requests=args.max_running_requests,
                 chunked_prefill_size=args.chunked_prefill_size,
                 max_prefill_tokens=max(args.chunked_prefill_size, 1), seq_buckets=args.seq_buckets,
                 disable_overlap_schedule=args.disable_overlap_schedule)
    padding = engine_padding(eng)
    feats = capture_step_features(eng)  # each step's features (padded as the engine pads), by step number
    print(f"engine up in {time.perf_counter() - t_start:.1f}s on {device_name()}; attention {eng.attn_impl}",
          flush=True)
    budget = None if args.max_seconds is None else time.perf_counter() + args.max_seconds
    print("compile pass (discarded):", flush=True)
    t0 = time.perf_counter()
    compile_deadline = None if budget is None else t0 + 0.65 * args.max_seconds
    _, configs = sweep(eng, args, configs_of(args), feats, np.random.default_rng(1), compile_deadline)
    compile_s = time.perf_counter() - t0
    print("measured pass:", flush=True)
    t0 = time.perf_counter()
    points = []
    for rep in range(args.repeats):
        points += sweep(eng, args, configs, feats, np.random.default_rng(2 + rep), budget)[0]
    measure_s = time.perf_counter() - t0
    model_name = args.name or Path(str(eng.model_dir)).name
    eng.shutdown()

    cost, choice = fit_costs(points, padding)
    result = {
        "model": model_name, "model_path": args.model_path, "load_format": args.load_format,
        "device": device_name(), "jax_version": jax.__version__, "attention_backend": eng.attn_impl,
        "overlap": not args.disable_overlap_schedule, "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "uptime_before": load_before, "uptime_after": uptime(), "argv": sys.argv,
        "engine_options": {k: getattr(args, k) for k in ("page_size", "max_total_tokens", "max_running_requests",
                                                         "chunked_prefill_size", "seq_buckets", "idle_lens",
                                                         "idle_prefix", "idle_repeats", "idle_pause", "agent_lens",
                                                         "agent_prefix")},
        "padding": vars(padding), "compile_pass_s": compile_s, "measured_pass_s": round(measure_s, 2),
        "cost_form": "step_time = intercept + sum(coef[f] * feature[f]); features: jaxsgl/sim/cost_model.py",
        "cost": cost, "fits": choice, "candidates": {k: list(v) for k, v in CANDIDATE_FEATURES.items()},
        "points": points,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}: {len(points)} points; compile pass {compile_s:.0f}s, measured pass {measure_s:.0f}s, "
          f"total {time.perf_counter() - t_start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
