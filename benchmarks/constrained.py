"""Constrained decoding: mask + advance cost per decode step, compile times, and jump-forward.

    python benchmarks/constrained.py                                  # default model (CPU or GPU)
    python benchmarks/constrained.py --model-path benchmarks/configs/llama-3.1-8b --load-format dummy
    python benchmarks/constrained.py --smoke                          # tiny run (CI)

1. mask: B requests decode M tokens, each under a DIFFERENT JSON schema (an object with one array
   of strings, named after the request), against the same B requests unconstrained; jump-forward off
   so every step is a decode step; median wall time of full-batch decode steps (engine trace), overhead in %.
2. compile: p50 / p99 compile seconds over a corpus of JSON schemas and regexes, and the table
   bytes of a compiled character-card schema.
3. jump-forward: SGLang's json_jump_forward workload (a character card regex for each of the 50
   names in ../shared/data/sglang_bench/json_jump_forward_dataset.txt) with jump-forward on and
   off: decode steps and wall time of a second, timed pass (the first compiles the automaton and the step shapes;
   the timed pass plans its jumps from empty plan caches unless --jf-warm-plans),
   output tokens per second and wall per output token (random weights write different texts on and off),
   and the loop thread's host CPU per step split by phase (LoopProbe: is a step host- or device-bound?);
   then the same with a character-card JSON schema (CARD_SCHEMA) instead of the regex.
Prints a table and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

W = r"[\w\d\s]{1,16}"
W_ASCII = r"[a-zA-Z0-9 ]{1,16}"


def character_regex(word: str = W) -> str:
    """SGLang's benchmark/json_jump_forward character regex (word: the free-text field pattern)."""
    return (r'\{\n    "name": "' + word + r'",\n    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n'
            r'    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n'
            r'    "occupation": "(student|teacher|auror|ministry of magic|death eater|order of the phoenix)",\n'
            r'    "wand": \{\n        "wood": "' + word + r'",\n        "core": "' + word + r'",\n'
            r'        "length": [0-9]{1,2}\.[0-9]{0,2}\n    \},\n    "alive": "(Alive|Deceased)",\n'
            r'    "patronus": "' + word + r'",\n    "bogart": "' + word + r'"\n\}')


CARD_SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 16}, "house": {"enum": ["Gryffindor", "Slytherin", "Ravenclaw",
                                                                  "Hufflepuff"]},
    "blood_status": {"enum": ["Pure-blood", "Half-blood", "Muggle-born"]},
    "wand": {"type": "object", "properties": {"wood": {"type": "string", "maxLength": 16},
                                              "length": {"type": "number"}}, "required": ["wood", "length"]},
    "alive": {"type": "boolean"}}, "required": ["name", "house", "blood_status", "wand", "alive"]}


def data_dir(given: str | None = None) -> Path:
    return Path(given or os.environ.get("JAXSGL_DATA", ROOT.parent / "shared" / "data"))


def decode_steps(trace: list[dict], batch: int) -> list[float]:
    return [t["step_time"] for t in trace if t["num_decode_seqs"] == batch and t["num_prefill_seqs"] == 0
            and t["step_time"]]


def bench_mask(eng, batch: int, new_tokens: int) -> dict:
    prompts = [f"Record {i} as JSON:" for i in range(batch)]
    base = {"max_new_tokens": new_tokens, "temperature": 1.0, "ignore_eos": True}
    # an array of strings: closing it takes one specific token, so rows stay open for the whole run
    # (a lone string field closes on any of the many tokens that contain a quote)
    schemas = [{"type": "object", "properties": {f"field_{i}": {"type": "array", "items": {"type": "string"}}},
                "required": [f"field_{i}"]} for i in range(batch)]
    eng.generate(prompts, [dict(base, seed=i) for i in range(batch)])  # warm-up: compiles this shape
    eng.generate(prompts, [dict(base, seed=i, json_schema=json.dumps(s)) for i, s in enumerate(schemas)])
    out = {}
    for name, extra in (("free", [{}] * batch), ("json", [{"json_schema": json.dumps(s)} for s in schemas])):
        before = eng.scheduler.step
        eng.generate(prompts, [dict(base, seed=100 + i, **e) for i, e in enumerate(extra)])
        steps = decode_steps(eng.trace(since_step=before + 1), batch)
        out[name + "_ms"] = 1e3 * statistics.median(steps) if steps else None
        out[name + "_steps"] = len(steps)
    if out["free_ms"] and out["json_ms"]:
        out["overhead_pct"] = 100 * (out["json_ms"] / out["free_ms"] - 1)
    return out


def bench_compile(vocab, n_schemas: int, n_regexes: int, backend: str = "outlines") -> dict:
    from jaxsgl.constrained import ConstraintSpec, compile_constraint
    from tests.constrained.corpus import regex_corpus, schema_corpus

    times = []
    specs = [ConstraintSpec("json_schema", json.dumps(s)) for s in schema_corpus(n_schemas)]
    specs += [ConstraintSpec("regex", r) for r in regex_corpus(n_regexes)]
    for spec in specs:
        t0 = time.perf_counter()
        compile_constraint(spec, vocab, backend=backend)
        times.append(time.perf_counter() - t0)
    card = compile_constraint(ConstraintSpec("json_schema", json.dumps(CARD_SCHEMA)), vocab, backend=backend)
    q = statistics.quantiles(times, n=100) if len(times) > 1 else times * 99
    return {"n": len(times), "p50_s": q[49], "p99_s": q[98], "card_states": getattr(card, "num_states", None),
            "card_table_bytes": card.nbytes}


def _bucket(buckets: list[int], n: int) -> int:
    """The token bucket (padded T) a step of n new tokens runs in."""
    return next((b for b in buckets if b >= n), buckets[-1])


class LoopProbe:
    """Host time of one engine's loop thread, per phase of a step (patched onto the engine's instances
    while in use): thread CPU seconds of the whole step (StepLoop.step) and of schedule, build
    (StepInputBuilder.build), dispatch (ModelRunner.run_async), collect (read back), outputs
    (RequestTracker.on_step_output) and, inside outputs, jump_plan (RequestTracker._plan_jump) and
    jump_apply (Scheduler.jump_forward), and the calls of each; plus the wall seconds blocked in collect
    (the device's share: ~0 when a step is host-bound under overlap scheduling)."""

    PHASES = {"step": ("loop", "step"), "schedule": ("scheduler", "schedule"), "build": ("builder", "build"),
              "dispatch": ("runner", "run_async"), "collect": ("runner", "collect"),
              "outputs": ("tracker", "on_step_output"), "jump_plan": ("tracker", "_plan_jump"),
              "jump_apply": ("scheduler", "jump_forward")}

    def __init__(self, eng: Any) -> None:
        self.eng = eng
        self.cpu = dict.fromkeys(self.PHASES, 0.0)
        self.calls = dict.fromkeys(self.PHASES, 0)
        self.wait_s = 0.0

    def _timed(self, fn: Callable, label: str) -> Callable:
        def timed(*a: Any, **k: Any) -> Any:
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.cpu[label] += time.thread_time() - c0
                self.calls[label] += 1
                if label == "collect":
                    self.wait_s += time.perf_counter() - w0
        return timed

    def __enter__(self) -> "LoopProbe":
        for label, (owner, name) in self.PHASES.items():
            obj = getattr(self.eng, owner)
            setattr(obj, name, self._timed(getattr(obj, name), label))
        return self

    def __exit__(self, *exc) -> None:
        for owner, name in self.PHASES.values():
            vars(getattr(self.eng, owner)).pop(name, None)  # back to the class's method

    def per_step_ms(self, steps: int) -> dict:
        """Milliseconds per step: host_cpu (the loop thread), each phase's CPU, other (build_sampling_input,
        advance, placeholder sources), wait (wall blocked on the device)."""
        ms = {k: 1e3 * v / max(steps, 1) for k, v in self.cpu.items()}
        top = ("schedule", "build", "dispatch", "collect", "outputs")
        out = {"host_cpu": ms["step"], **{k: ms[k] for k in top + ("jump_plan", "jump_apply")}}
        out["other"] = ms["step"] - sum(ms[k] for k in top)
        out["wait"] = 1e3 * self.wait_s / max(steps, 1)
        return out


def clear_jump_plans(eng: Any) -> None:
    """Empty the jump-forward plan caches of the engine's compiled automata (the next pass plans cold)."""
    compiler = eng.grammar.compiler
    for spec in compiler.cached_specs():
        plans = getattr(compiler.get(spec), "jump_plans", None)
        if plans is not None:
            plans.clear()


def bench_jump_forward(make_engine: Callable[..., Any], names: list[str], constraint: dict, max_new: int,
                       warm_plans: bool = False, engine_kwargs: dict | None = None) -> dict:
    """Jump-forward on vs off over the same prompts: steps, wall, output tokens (their speed and wall per
    token: with random weights the two runs write different texts), host CPU per step and its split.
    The timed pass repeats the untimed one's outputs: unless warm_plans, it starts with empty jump-plan
    caches, so it pays for planning as a first pass does (requests still share plans within it)."""
    out = {"plans": "warm" if warm_plans else "cold"}
    prompts = [f"{n} is a character in Harry Potter. Please fill in the following information about this "
               "character.\n" for n in names]
    for jf in (True, False):
        eng = make_engine(disable_regex_jump_forward=not jf, **(engine_kwargs or {}))
        try:
            sp = {"max_new_tokens": max_new, "temperature": 0, **constraint}
            eng.generate(prompts, [sp] * len(prompts))  # untimed: the automaton and every step shape it meets
            eng.flush_cache()  # the timed run starts from an empty radix cache, as the untimed one did
            if not warm_plans:
                clear_jump_plans(eng)
            before, compiled = eng.scheduler.step, eng.runner.num_compiled()
            with LoopProbe(eng) as probe:
                t0 = time.perf_counter()
                res = eng.generate(prompts, [sp] * len(prompts))
                wall = time.perf_counter() - t0
            trace = eng.trace(since_step=before + 1)
            tokens = sum(r["meta_info"]["completion_tokens"] for r in res)
            out["on" if jf else "off"] = {
                "steps": len(trace), "wall_s": wall,
                "jump_forward_tokens": sum(r["meta_info"]["jump_forward_tokens"] for r in res),
                "output_tokens": tokens, "output_tokens_per_s": tokens / wall,
                "wall_ms_per_token": 1e3 * wall / max(tokens, 1),
                "wall_ms_per_step": 1e3 * wall / max(len(trace), 1),
                "tokens_per_step": sum(t["new_tokens"] for t in trace) / max(len(trace), 1),
                "padded_tokens_per_step": sum(_bucket(eng.builder.token_buckets, t["new_tokens"]) for t in trace)
                / max(len(trace), 1),
                "extend_steps": sum(1 for t in trace if t["num_prefill_seqs"]),
                "jumps": probe.calls["jump_apply"],  # under overlap each discards its request's row in flight
                "recompiles": eng.runner.num_compiled() - compiled,
                "host_ms_per_step": probe.per_step_ms(len(trace)),
                "host_cpu_s": probe.cpu["step"]}
        finally:
            eng.shutdown()
    on, off = out["on"], out["off"]
    out["step_ratio"] = off["steps"] / max(on["steps"], 1)
    out["wall_ratio"] = off["wall_s"] / max(on["wall_s"], 1e-9)
    out["wall_per_token_ratio"] = off["wall_ms_per_token"] / max(on["wall_ms_per_token"], 1e-9)
    out["host_cpu_ratio"] = off["host_cpu_s"] / max(on["host_cpu_s"], 1e-9)
    return out


def bench_mask_and_compile(make: Callable[..., Any], result: dict, batches: list[int], args: argparse.Namespace) -> None:
    """Parts 1 and 2 into result["mask"], result["compile"] (printed)."""
    eng = make(disable_regex_jump_forward=True)  # every constrained step a plain decode step: the mask's cost alone
    try:
        for b in batches:
            result["mask"][b] = bench_mask(eng, b, args.new_tokens)
            print(f"mask, batch {b}: {result['mask'][b]}", flush=True)
        result["compile"] = bench_compile(eng.grammar.vocab, args.schemas, args.regexes, args.grammar_backend)
    finally:
        eng.shutdown()
    print(f"{'batch':>6} {'free ms':>9} {'json ms':>9} {'overhead':>9}")
    for b, m in result["mask"].items():
        fmt = lambda x: f"{x:9.2f}" if x is not None else f"{'-':>9}"  # noqa: E731
        print(f"{b:>6} {fmt(m['free_ms'])} {fmt(m['json_ms'])} {fmt(m.get('overhead_pct'))}%")
    c = result["compile"]
    print(f"compile ({args.grammar_backend}): {c['n']} constraints, p50 {c['p50_s']:.3f}s p99 {c['p99_s']:.3f}s; "
          f"character-card schema {c['card_states']} states, {c['card_table_bytes'] / 1e6:.1f} MB")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--data", default=None, help="the paper's data folder (default ../shared/data, $JAXSGL_DATA)")
    ap.add_argument("--batch-sizes", default="1,64,256")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--schemas", type=int, default=100)
    ap.add_argument("--regexes", type=int, default=300)
    ap.add_argument("--names", type=int, default=50, help="json_jump_forward names (0: skip that part)")
    ap.add_argument("--jf-max-new", type=int, default=256)
    ap.add_argument("--grammar-backend", default="outlines", choices=["outlines", "llguidance"],
                    help="EngineOptions.grammar_backend (llguidance: host masks, its fast-forward tokens)")
    ap.add_argument("--grammar-max-states", type=int, default=None,
                    help="EngineOptions.grammar_max_states (also one constraint's limit)")
    ap.add_argument("--ascii", action="store_true", help="character regex with [a-zA-Z0-9 ] (fast to compile)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CI)")
    ap.add_argument("--jf-only", action="store_true", help="only part 3 (jump-forward)")
    ap.add_argument("--jf-warm-plans", action="store_true",
                    help="keep the untimed pass's jump-forward plans for the timed pass (default: plan cold)")
    ap.add_argument("--out", default="benchmarks/results/constrained.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.new_tokens, args.schemas, args.regexes, args.names, args.ascii = "1,4", 8, 3, 3, 2, True
        args.jf_max_new = 200
    from jaxsgl.engine.engine import Engine

    batches = [int(b) for b in args.batch_sizes.split(",")]
    opts = dict(load_format=args.load_format, dtype=args.dtype, max_running_requests=max(batches + [args.names]))
    if args.smoke:
        opts["max_total_tokens"] = 8192
    opts["grammar_backend"] = args.grammar_backend
    if args.grammar_max_states:
        opts["grammar_max_states"] = args.grammar_max_states
    make = lambda **kw: Engine(args.model_path, **opts, **kw)  # noqa: E731
    import jax
    result: dict = {"argv": sys.argv[1:], "grammar_backend": args.grammar_backend, "mask": {},
                    "device": str(jax.devices()[0])}
    if not args.jf_only:
        bench_mask_and_compile(make, result, batches, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    if args.names:
        names = (data_dir(args.data) / "sglang_bench" / "json_jump_forward_dataset.txt").read_text().split("\n")
        names = [n for n in names if n.strip()][:args.names]
        schema = {"json_schema": json.dumps(CARD_SCHEMA)}
        # the schema twice: outlines' default whitespace between JSON tokens (`[ ]?`: a random model
        # takes the optional spaces at random, so little is forced) and compact JSON (SGLang's
        # --constrained-json-whitespace-pattern "": every key and its punctuation is forced)
        for key, constraint, kw in (("jump_forward", {"regex": character_regex(W_ASCII if args.ascii else W)}, {}),
                                    ("jump_forward_schema", schema, {}),
                                    ("jump_forward_schema_compact", schema,
                                     {"constrained_json_whitespace_pattern": ""})):
            result[key] = j = bench_jump_forward(make, names, constraint, args.jf_max_new, args.jf_warm_plans, kw)
            print(f"{key} ({len(names)} cards): steps {j['on']['steps']} vs {j['off']['steps']} "
                  f"({j['step_ratio']:.2f}x fewer), wall {j['on']['wall_s']:.2f}s vs {j['off']['wall_s']:.2f}s "
                  f"({j['wall_ratio']:.2f}x), wall/token {j['wall_per_token_ratio']:.2f}x, "
                  f"host CPU {j['host_cpu_ratio']:.2f}x", flush=True)
            for side in ("on", "off"):
                h = j[side]["host_ms_per_step"]
                print(f"  {side:>3}: {j[side]['output_tokens_per_s']:.0f} tok/s, "
                      + ", ".join(f"{k} {v:.2f}" for k, v in h.items()) + " ms/step", flush=True)
            Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
