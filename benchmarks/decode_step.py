"""Where a decode step's time goes: the jitted step alone (device) vs the whole engine step (host + device).

    python benchmarks/decode_step.py --model benchmarks/configs/llama-3.1-8b --load-format dummy
    python benchmarks/decode_step.py --smoke --out /tmp/d.json      # tiny random model on the CPU (CI)

For each batch size it times, on one fixed decode StepInput (context --context tokens):
  device_ms   the jitted forward + greedy sampling on inputs already on the device, back to back
  sync_ms     the same with a device->host copy of the outputs after every call
  runner_ms   ModelRunner.run from host arrays: pack, one transfer, step, one transfer back (the engine's path)
and with the page table as wide as the engine makes it (--context-length of the model) and as narrow
as the batch needs, so the cost of the table width shows. With --grammar, also (narrow table only):
  async_ms    the overlap step (ModelRunner.run_async, the engine's path) unconstrained, back to back
  grammar_ms  the same with every row under its own JSON schema (distinct automata in the pooled device
              tables, each row in the state with the most allowed tokens: inside its string), so the
              mask + next-state cost shows without requests that finish (grammar_pct = the difference)
With --roofline (issue 14's table: --batches 1 8 32 64 128 256 --contexts 512 2048 8192), each cell's
device_ms next to its roofline: max(bytes of weights + KV read / --bandwidth, FLOPs / --peak-flops), and the
fraction reached; --profile B,C traces that cell (per-kernel GPU time by kind: matmul, attention,
layout copies, sampling). Every shape is compiled first, ahead of time, on --compile-threads threads (an 8B step
takes ~9 s to compile on the H200). Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import host_event_times, profile_kernels, tiny_model_dir  # noqa: E402
from jaxsgl import kernels  # noqa: E402
from jaxsgl.engine.grammar_tables import GrammarTables, apply_upload, init_tables  # noqa: E402
from jaxsgl.engine.model_runner import ModelRunner, weights_nbytes  # noqa: E402
from jaxsgl.engine.sampling import SamplingFlags  # noqa: E402
from jaxsgl.engine.step_sampling import greedy_sampling_input  # noqa: E402
from jaxsgl.engine.packing import pack  # noqa: E402
from jaxsgl.model.forward import kv_bytes_per_token  # noqa: E402
from jaxsgl.model.loader import load_model  # noqa: E402
from jaxsgl.model.step_input import make_step_input, step_input_fields  # noqa: E402


def time_calls(fn, n: int, sync_each: bool) -> float:
    out = fn()
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
        if sync_each:
            np.asarray(out)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n * 1e3


def dispatch_ms(fn, n: int) -> float:
    """Median host time of one call returning, the device idle before each (launch cost, not queueing)."""
    times = []
    for _ in range(n):
        jax.block_until_ready(fn())
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        jax.block_until_ready(out)
    return float(np.median(times)) * 1e3


def dispatch_study(runner, fn, cell, flags, iters: int, trace: bool = False) -> dict:
    """Host ms per call of the same step dispatched the ways the engine could: the compiled step on
    the same device buffers each call, on freshly transferred inputs, and ModelRunner.run_async (the
    engine's call: pack, transfer, device-side page-table padding, the previous step's tokens).
    Each as 'idle' (the device idle before the call) and 'busy' (back to back, one step in flight,
    as the overlapped engine runs; with its steps per second)."""
    S, ctx, width, pps, step, si, flat, layout, hint, table = cell
    flat_np, table_np = np.asarray(flat), np.asarray(table)
    src = np.where(np.arange(step.num_tokens) < S, np.arange(step.num_tokens), -1).astype(np.int32)
    state = {"prev": None}

    def same():
        out, runner.kv = fn(runner.weights, runner.kv, flat, table, layout=layout, hint=hint)
        return out

    def fresh():
        out, runner.kv = fn(runner.weights, runner.kv, jax.device_put(flat_np), jax.device_put(table_np),
                            layout=layout, hint=hint)
        return out

    def run_async():
        h = runner.run_async(step, si, flags, state["prev"], src if state["prev"] is not None else src * 0 - 1)
        state["prev"] = h
        return h.out

    def run_async_no_prev():
        return runner.run_async(step, si, flags, None, src * 0 - 1).out

    def numpy_args(with_table: bool):  # host arrays as jit arguments: JAX transfers them in the call
        def call():
            out, runner.kv = fn(runner.weights, runner.kv, flat_np, table_np if with_table else table,
                                layout=layout, hint=hint)
            return out
        return call

    # the packed inputs as a jit parameter in page-locked host memory, copied to the device inside the step
    from jaxsgl.engine.model_runner import _step
    dev = jax.devices()[0]
    pinned, on_device = (jax.sharding.SingleDeviceSharding(dev, memory_kind="pinned_host"),
                         jax.sharding.SingleDeviceSharding(dev))
    step_fn = functools.partial(_step, cfg=runner.cfg, attn_impl=runner.attn_impl, flags=flags)
    host_jit = jax.jit(lambda w, kv, fh, t: step_fn(w, kv, jax.device_put(fh, on_device), t, layout=layout, hint=hint),
                       donate_argnums=(1,))

    def pinned_param(staged: list | None = None):
        def call():
            fh = staged.pop() if staged else jax.device_put(flat_np, pinned)
            out, runner.kv = host_jit(runner.weights, runner.kv, fh, table)
            return out
        return call

    def cycling(k: int):  # k buffer sets transferred beforehand, used in turn (k = 2: two fixed addresses)
        ring = [(jax.device_put(flat_np), jax.device_put(table_np)) for _ in range(k)]
        turn = {"i": 0}

        def call():
            turn["i"] = (turn["i"] + 1) % k
            out, runner.kv = fn(runner.weights, runner.kv, *ring[turn["i"]], layout=layout, hint=hint)
            return out
        return call

    out = {}
    for name, call in (("same_buffers", same), ("alternating_2", cycling(2)), ("distinct", cycling(2 * iters + 4)),
                       ("fresh_inputs", fresh), ("numpy_flat", numpy_args(False)),
                       ("numpy_flat_table", numpy_args(True)), ("pinned_param", pinned_param()),
                       ("pinned_param_staged",
                        pinned_param([jax.device_put(flat_np, pinned) for _ in range(2 * iters + 4)])),
                       ("run_async_no_prev", run_async_no_prev),
                       ("run_async", run_async)):
        jax.block_until_ready(call())
        idle = []
        for _ in range(iters):
            t0 = time.perf_counter()
            o = call()
            idle.append(time.perf_counter() - t0)
            jax.block_until_ready(o)
        busy, pending = [], call()
        t_start = time.perf_counter()
        for _ in range(iters):
            t0 = time.perf_counter()
            o = call()
            busy.append(time.perf_counter() - t0)
            np.asarray(pending)  # read the previous step back, as the engine does
            pending = o
        np.asarray(pending)
        out[name] = {"idle_ms": 1e3 * float(np.median(idle)), "busy_ms": 1e3 * float(np.median(busy)),
                     "step_ms": 1e3 * (time.perf_counter() - t_start) / iters}
        print(f"dispatch {name}: {json.dumps(out[name])}", flush=True)
    if trace:  # which host call waits: the host passed as arguments with a step in flight, traced
        call, state["pending"] = numpy_args(False), None

        def busy_step():
            o = call()
            if state["pending"] is not None:
                np.asarray(state["pending"])
            state["pending"] = o
        busy_step()
        out["numpy_flat_busy_host_events"] = host_event_times(busy_step, 6)
        np.asarray(state["pending"])
        for e in out["numpy_flat_busy_host_events"][:15]:
            print(f"  host event {e['total_ms']:8.2f} ms  x{e['count']:<4} max {e['max_ms']:7.2f}  "
                  f"{e['thread']:<24} {e['name']}")
    return out


def grammar_rows(model_dir: Path, cfg, n: int) -> tuple[GrammarTables, list[int]]:
    """Device tables holding n distinct JSON-schema automata; per automaton, the global state with the
    most allowed tokens (inside its string: the widest mask and most exceptions)."""
    from jaxsgl.constrained import ConstraintSpec, TokenVocab, compile_constraint
    from jaxsgl.constrained.table_pool import AutomatonPool
    from jaxsgl.tokenizer import load_tokenizer

    vocab = TokenVocab.from_tokenizer(load_tokenizer(model_dir), cfg.vocab_size, cfg.eos_token_ids)
    limits = (65536, 2048, 1 << 22)  # EngineOptions' grammar_max_* defaults
    words = (cfg.vocab_size + 31) // 32
    pool, tables, states = AutomatonPool(*limits, words), init_tables(*limits, words), []
    for i in range(n):
        schema = {"type": "object", "properties": {f"field_{i}": {"type": "string"}}, "required": [f"field_{i}"]}
        fsm = compile_constraint(ConstraintSpec("json_schema", json.dumps(schema)), vocab)
        placement, upload = pool.acquire(i, fsm)
        tables = apply_upload(tables, upload) if upload is not None else tables
        states.append(placement.state_base + max(range(fsm.num_states), key=fsm.num_allowed))
    return tables, states


def override_decode_config(spec: str) -> None:
    """--decode-config: steps traced from now on launch the decode class with this KV block, split count
    (0: block_configs' choice), warps and stages. Patches ragged_paged_attention's
    default_configs and turns jaxsgl's executable cache off (its key does not know the patch)."""
    import importlib
    rpa = importlib.import_module("jaxsgl.kernels.ragged_paged_attention")  # the package's name is its function
    block_k, splits, warps, stages = (int(x) for x in spec.split(","))
    chosen = rpa.default_configs

    def patched(*args, **kwargs):
        short, long = chosen(*args, **kwargs)
        return short._replace(block_k=block_k, num_splits=splits or short.num_splits, num_warps=warps,
                              num_stages=stages), long

    rpa.default_configs = patched
    os.environ["JAXSGL_GPU_EXECUTABLE_CACHE"] = "0"


def roofline_ms(cfg, weight_bytes: int, params: int, S: int, ctx: int, kv_bytes_tok: int, bandwidth: float,
                peak_flops: float) -> tuple[float, float, float]:
    """(roofline ms, bytes read, FLOPs) of one decode step: every weight and each row's KV read once
    (bytes / bandwidth), or the matmuls + attention at peak (FLOPs / peak), whichever is larger."""
    nbytes = weight_bytes + S * (ctx + 1) * kv_bytes_tok
    flops = 2 * params * S + 4 * S * (ctx + 1) * cfg.num_heads * cfg.head_dim * cfg.num_layers
    return 1e3 * max(nbytes / bandwidth, flops / peak_flops), nbytes, flops


def print_width_diff(rows: list[dict]) -> None:
    """Where a profiled cell ran at two page-table widths: the kernels whose GPU time differs most."""
    prof = [r for r in rows if "kernels_us" in r.get("profile", {})]
    for narrow, wide in zip(prof, prof[1:]):
        if (narrow["batch"], narrow["context"]) != (wide["batch"], wide["context"]):
            continue
        a, b = narrow["profile"]["kernels_us"], wide["profile"]["kernels_us"]
        diff = sorted(((b.get(k, 0.0) - a.get(k, 0.0), k) for k in set(a) | set(b)), reverse=True)
        print(f"batch {narrow['batch']}, context {narrow['context']}: width {wide['page_table_width']} vs "
              f"{narrow['page_table_width']}, kernels {wide['profile']['sum_us']:.0f} vs "
              f"{narrow['profile']['sum_us']:.0f} us:")
        for d, k in diff[:8] + diff[-3:]:
            print(f"  {d:+9.1f} us  {k[:110]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF directory or config dir (with --load-format dummy)")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--contexts", type=int, nargs="+", default=None, help="several contexts (default: --context)")
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--enable-deterministic-inference", action="store_true",
                    help="the batch-invariant step (ModelRunner's deterministic)")
    ap.add_argument("--narrow-only", action="store_true", help="skip the model-context-wide page table")
    ap.add_argument("--both-widths", action="store_true",
                    help="with --roofline: also the model-context-wide page table (what the engine compiles)")
    ap.add_argument("--grammar", action="store_true", help="also time the step with every row under its own JSON schema")
    ap.add_argument("--roofline", action="store_true",
                    help="device_ms only, narrow table, with each cell's roofline and the fraction reached")
    ap.add_argument("--bandwidth", type=float, default=4.3e12, help="bytes/s for the roofline (H200 measured copy)")
    ap.add_argument("--peak-flops", type=float, default=790e12, help="FLOP/s for the roofline (H200 bf16 measured)")
    ap.add_argument("--kv-pool-gb", type=float, default=40.0,
                    help="physical KV pages; rows beyond it reuse pages (HBM traffic all the same: >> L2)")
    ap.add_argument("--compile-threads", type=int, default=os.cpu_count() or 1,
                    help="compile every (batch, context) step ahead of time on this many threads")
    ap.add_argument("--profile", nargs="+", default=[], metavar="BATCH,CONTEXT",
                    help="also trace these cells' steps: GPU time per kernel and per kind (jax.profiler)")
    ap.add_argument("--dispatch-study", action="store_true",
                    help="host launch cost of the largest batch's step: same buffers, fresh inputs, run_async")
    ap.add_argument("--dispatch-trace", action="store_true",
                    help="with --dispatch-study: the host events of launches from host arrays with a step in flight")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, batches 1 2, context 32, 3 iters")
    ap.add_argument("--decode-config", default=None, metavar="BLOCK_K,SPLITS,WARPS,STAGES",
                    help="A/B: the decode class's launch shape instead of block_configs' (splits 0: its choice)")
    ap.add_argument("--out", default="decode_step.json")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.load_format = str(tiny_model_dir(with_tokenizer=True)), "dummy"
        args.batches, args.context, args.iters, args.grammar = [1, 2], 32, 3, True
    if args.model is None:
        ap.error("--model is required (or --smoke)")
    contexts = args.contexts or [args.context]
    narrow_only = (args.narrow_only or args.roofline) and not args.both_widths
    if args.decode_config:
        override_decode_config(args.decode_config)
    cfg, weights, model_dir = load_model(args.model, load_format=args.load_format)
    ps = args.page_size
    kv_tok = kv_bytes_per_token(cfg, weights.embed.dtype)
    need = max(args.batches) * -(-(max(contexts) + 1) // ps)
    cap = max(1, min(need, int(args.kv_pool_gb * 1e9 // (ps * kv_tok))))
    wide = -(-cfg.max_position_embeddings // ps)
    runner = ModelRunner(cfg, weights, num_pages=cap + 1, page_size=ps,
                         attn_impl=kernels.resolve_impl(args.attention_backend), max_seqs=max(args.batches),
                         deterministic=args.enable_deterministic_inference)
    weight_bytes = weights_nbytes(weights)
    params = sum(x.size for x in jax.tree_util.tree_leaves(weights))
    flags = SamplingFlags()
    fn = runner._fn(flags)
    tables, gstates = grammar_rows(model_dir, cfg, max(args.batches)) if args.grammar else (None, [])
    cells = []
    for ctx in contexts:
        pps = -(-(ctx + 1) // ps)
        for S in args.batches:
            seqs = [([7], ctx, [1 + (i * pps + j) % cap for j in range(pps)]) for i in range(S)]
            for width in (pps,) if narrow_only else (pps, wide):
                step = make_step_input(seqs, ps, num_tokens=max(S, 16), pages_per_seq=width)
                si = greedy_sampling_input(S, step.num_tokens)
                arrays = {"step." + n: getattr(step, n) for n in step_input_fields() if n != "page_table"}
                arrays.update({"samp." + f.name: getattr(si, f.name) for f in dataclasses.fields(si)})
                flat, layout = pack(arrays)
                hint = kernels.step_hint(np.diff(step.query_start), runner.attn_impl)  # the engine's variant
                cells.append((S, ctx, width, pps, step, si, jax.device_put(flat), layout, hint,
                              jax.device_put(step.page_table)))
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.compile_threads)) as pool:  # XLA compiles without the GIL
        list(pool.map(lambda c: fn.precompile(runner.weights, runner.kv, c[6], c[9], layout=c[7], hint=c[8]), cells))
    compile_s = time.perf_counter() - t0
    print(f"compiled {len(cells)} step shapes in {compile_s:.1f}s on {args.compile_threads} threads", flush=True)
    rows = []
    for S, ctx, width, pps, step, si, flat, layout, hint, table in cells:
        def device_only():
            out, runner.kv = fn(runner.weights, runner.kv, flat, table, layout=layout, hint=hint)
            return out

        row = {"batch": S, "page_table_width": width, "context": ctx,
               "device_ms": time_calls(device_only, args.iters, False)}
        if args.roofline:
            row["roofline_ms"], row["bytes"], row["flops"] = roofline_ms(cfg, weight_bytes, params, S, ctx, kv_tok,
                                                                         args.bandwidth, args.peak_flops)
            row["fraction"] = row["roofline_ms"] / row["device_ms"]
        else:
            row["sync_ms"] = time_calls(device_only, args.iters, True)
            row["dispatch_ms"] = dispatch_ms(device_only, args.iters)
            row["runner_ms"] = time_calls(lambda: runner.run(step, si, flags).token_ids, args.iters, False)
        if args.grammar and width == pps:
            src = np.full(step.num_tokens, -1, np.int32)
            gsi = dataclasses.replace(si, grammar_state=np.asarray(gstates[:S], np.int32))
            for name, sinput, f, g in (("async_ms", si, flags, None),
                                       ("grammar_ms", gsi, SamplingFlags(grammar=True), tables)):
                run = lambda: runner.run_async(step, sinput, f, None, src, grammar=g).out  # noqa: E731
                row[name] = time_calls(run, args.iters, False)
            row["grammar_pct"] = 100 * (row["grammar_ms"] / row["async_ms"] - 1)
        if (S, ctx) in {tuple(map(int, cell.split(","))) for cell in args.profile}:  # every width
            row["profile"] = profile_kernels(device_only, max(args.iters // 2, 3))
        rows.append(row)
        print(json.dumps(row), flush=True)
    study = None
    if args.dispatch_study:
        study = dispatch_study(runner, fn, next(c for c in reversed(cells) if c[2] == c[3]), flags, args.iters,
                               trace=args.dispatch_trace)
    from jaxsgl.model.compile_cache import traced_environment  # the settings the steps were traced under
    settings = dict(traced_environment(), XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
    if args.enable_deterministic_inference:
        settings["enable_deterministic_inference"] = "1"
    if args.decode_config:
        settings["decode_config"] = args.decode_config
    Path(args.out).write_text(json.dumps({"model": args.model, "device": jax.devices()[0].device_kind,
                                          "argv": sys.argv, "settings": settings, "compile_s": compile_s, "rows": rows,
                                          "dispatch_study": study}, indent=2))
    for r in rows:
        if "profile" in r and "kinds_us" in r["profile"]:
            p = r["profile"]
            print(f"batch {r['batch']}, context {r['context']}: kernels {p['sum_us']:.0f} us of a {p['span_us']:.0f} us "
                  "span per step: " + ", ".join(f"{k} {v:.0f} us ({p['launches'][k]:.0f} launches)"
                                                 for k, v in p["kinds_us"].items()))
    print_width_diff(rows)
    if args.roofline:
        print(f"{'batch':>6}{'context':>9}{'P width':>9}{'step ms':>10}{'roofline ms':>13}{'fraction':>10}")
        for r in rows:
            print(f"{r['batch']:>6}{r['context']:>9}{r['page_table_width']:>9}{r['device_ms']:>10.2f}"
                  f"{r['roofline_ms']:>13.2f}{r['fraction']:>9.0%}")
        return
    print(f"{'batch':>6}{'context':>9}{'P width':>9}{'device ms':>11}{'sync ms':>9}{'dispatch':>10}{'runner ms':>11}"
          f"{'async ms':>10}{'grammar ms':>12}{'grammar %':>11}")
    for r in rows:
        g = (f"{r['async_ms']:>10.2f}{r['grammar_ms']:>12.2f}{r['grammar_pct']:>10.1f}%" if "grammar_ms" in r else "")
        print(f"{r['batch']:>6}{r['context']:>9}{r['page_table_width']:>9}{r['device_ms']:>11.2f}{r['sync_ms']:>9.2f}"
              f"{r['dispatch_ms']:>10.2f}{r['runner_ms']:>11.2f}{g}")


if __name__ == "__main__":
    main()
