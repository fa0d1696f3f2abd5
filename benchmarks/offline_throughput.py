"""Offline throughput of the Engine: batch-1 decode latency, then workloads with the cache on and off.

    python benchmarks/offline_throughput.py                                   # default model, CPU-sized
    python benchmarks/offline_throughput.py --model benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --num-prompts 256 --input-len 128 1024 --output-len 64 256 --groups 16 --per-group 16 --system-len 1024
    python benchmarks/offline_throughput.py --smoke --out /tmp/o.json         # tiny random model, seconds (CI)

The issue-14 shapes, side by side with benchmarks/peer_hf.py (same requests for the same seed):
    ... --model benchmarks/configs/llama-3.1-8b --load-format dummy --num-prompts 256 --input-len 128 128 \\
        --output-len 128 128 --max-running-requests 256 --datasets random sharegpt --cache-modes off

Datasets (--datasets; token ids, built by benchmarks/_common.py):
  random         --num-prompts requests with input/output lengths uniform in the given ranges
  shared-prefix  --groups x --per-group requests: a --system-len prefix per group + a 64-token question, shuffled
  sharegpt       --num-prompts real ShareGPT prompts (../shared/data/sharegpt, tokenized with the default
                 model's tokenizer, at most --sharegpt-max-input tokens) with output lengths of real replies
Each runs twice per cache mode (the first pass compiles what its batches need and is not reported).
Prints a table and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import DATASETS, make_workloads, profile_kernels, tiny_model_dir, workload_summary  # noqa: E402
from jaxsgl.engine.engine import Engine  # noqa: E402

SMOKE = dict(num_prompts=4, input_len=[8, 24], output_len=[2, 4], groups=2, per_group=2, system_len=16,
             max_running_requests=4, chunked_prefill_size=32, batch1_output=4, batch1_input=16,
             sharegpt_max_input=48, sharegpt_max_output=4, seq_buckets=[1, 4], datasets=list(DATASETS))


def last_step(eng: Engine) -> int:
    """The id of the newest trace record (-1 if none): mark it, then steps_since(eng, mark)."""
    t = eng.trace()
    return t[-1]["step"] if t else -1


def steps_since(eng: Engine, mark: int) -> list[dict]:
    """Trace records of the steps after `mark` (the trace is a ring buffer: never slice it by length)."""
    return [r for r in eng.trace() if r["step"] > mark]


def run_workload(eng: Engine, work) -> dict:
    eng.flush_cache()
    compiled = eng.runner.num_compiled()
    before = dict(eng.cache_stats())
    mark = last_step(eng)
    t0 = time.perf_counter()
    outs = eng.generate(input_ids=[w[0] for w in work],
                        sampling_params=[{"max_new_tokens": w[1], "temperature": 0, "ignore_eos": True} for w in work])
    wall = time.perf_counter() - t0
    steps = steps_since(eng, mark)
    after = eng.cache_stats()
    prompt = sum(len(w[0]) for w in work)
    out_tok = sum(o["meta_info"]["completion_tokens"] for o in outs)
    cached = after["cached_prompt_tokens"] - before["cached_prompt_tokens"]
    return {"requests": len(work), "wall_s": wall, "req_per_s": len(work) / wall, "output_tok_per_s": out_tok / wall,
            "total_tok_per_s": (prompt + out_tok) / wall, "prompt_tokens": prompt, "output_tokens": out_tok,
            "hit_rate": cached / max(prompt, 1), "prefill_tokens_computed": sum(s["prefill_tokens"] for s in steps),
            "steps": len(steps), "compiled_during_run": eng.runner.num_compiled() - compiled,
            "step_kinds": step_kinds(steps, t0)}


def step_kinds(steps: list[dict], t0: float) -> dict:
    """Where the wall time went, by kind of step: count, wall seconds (end to end of the previous
    step, the first from t0) and padded-to-nothing new tokens, for pure decode steps and steps with
    a prefill (mixed or not); and the engine loop's host seconds by phase (StepTrace's prepare /
    dispatch / wait / process times: wait ~0 means the device waited on the host)."""
    phases = ("prepare_time", "dispatch_time", "wait_time", "process_time")
    out = {k: {"steps": 0, "wall_s": 0.0, "new_tokens": 0, "decode_rows": 0, **{p: 0.0 for p in phases}}
           for k in ("decode", "prefill")}
    prev = t0
    for s in steps:
        k = out["prefill" if s["prefill_tokens"] else "decode"]
        k["steps"] += 1
        k["wall_s"] += s["end_time"] - prev
        k["new_tokens"] += s["new_tokens"]
        k["decode_rows"] += s["num_decode_seqs"]
        for p in phases:
            k[p] += s.get(p) or 0.0
        prev = s["end_time"]
    return out


def batch1_decode(eng: Engine, in_len: int, out_len: int, vocab: int) -> dict:
    """Batch-1 decode: ms per output token (engine wall clock between steps) after a compile pass."""
    ids = np.random.default_rng(7).integers(10, vocab, in_len).tolist()
    eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})  # compile
    mark = last_step(eng)
    eng.generate(input_ids=ids[::-1], sampling_params={"max_new_tokens": out_len, "temperature": 0, "ignore_eos": True})
    steps = steps_since(eng, mark)
    decode = [s["step_time"] for s in steps if s["num_decode_seqs"] == 1 and s["num_seqs"] == 1]
    # wall clock between consecutive decode steps: the step plus all host work around it
    wall = [b["end_time"] - a["end_time"] for a, b in zip(steps, steps[1:]) if b["num_decode_seqs"] == 1]
    return {"ms_per_token_median": 1e3 * statistics.median(wall), "ms_per_token_mean": 1e3 * statistics.mean(wall),
            "runner_ms_median": 1e3 * statistics.median(decode), "decode_steps": len(decode)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--datasets", nargs="+", default=["random", "shared-prefix"], choices=DATASETS)
    ap.add_argument("--cache-modes", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--input-len", type=int, nargs=2, default=[16, 128])
    ap.add_argument("--output-len", type=int, nargs=2, default=[8, 32])
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--system-len", type=int, default=256)
    ap.add_argument("--sharegpt-max-input", type=int, default=1024)
    ap.add_argument("--sharegpt-max-output", type=int, default=1024)
    ap.add_argument("--max-running-requests", type=int, default=64)
    ap.add_argument("--chunked-prefill-size", type=int, default=512)
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--batch1-input", type=int, default=128)
    ap.add_argument("--batch1-output", type=int, default=32, help="0: skip the batch-1 decode measurement")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--context-length", type=int, default=None,
                    help="the Engine's context_length (default: the model's; it sets the page table's width)")
    ap.add_argument("--disable-overlap-schedule", action="store_true", help="synchronous steps (no overlap scheduling)")
    ap.add_argument("--enable-deterministic-inference", action="store_true",
                    help="batch-invariant steps (what the option costs)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", action="store_true",
                    help="trace one more pass of the first workload (jax.profiler): GPU time per kernel and the "
                         "GPU's busy time against the wall (is the engine waiting on the host?)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model and workloads (CI: seconds on a CPU)")
    ap.add_argument("--out", default="offline_throughput.json")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.model, args.load_format = str(tiny_model_dir()), "dummy"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("jaxsgl").setLevel(logging.INFO)

    t0 = time.perf_counter()
    eng = Engine(args.model, load_format=args.load_format, dtype=args.dtype, skip_tokenizer_init=True,
                 max_running_requests=args.max_running_requests, chunked_prefill_size=args.chunked_prefill_size,
                 max_prefill_tokens=max(args.chunked_prefill_size, 1), attention_backend=args.attention_backend,
                 seq_buckets=args.seq_buckets, disable_overlap_schedule=args.disable_overlap_schedule,
                 enable_deterministic_inference=args.enable_deterministic_inference,
                 context_length=args.context_length)
    start_s = time.perf_counter() - t0
    vocab = eng.cfg.vocab_size
    result = {"model": str(eng.model_dir), "load_format": args.load_format, "attention": eng.attn_impl,
              "engine_start_s": start_s, "args": vars(args)}
    if args.batch1_output:
        result["batch1"] = batch1_decode(eng, args.batch1_input, args.batch1_output, vocab)
        print(f"batch1: {json.dumps(result['batch1'])}", flush=True)
    rows = []
    for name, work in make_workloads(args.datasets, args, vocab).items():
        result[f"{name}/workload"] = workload_summary(work)
        for cache in args.cache_modes:
            eng.scheduler.cache.enabled = cache == "on"  # the loop is idle between workloads
            # untimed pass: compiles the step shapes and attention variants this mode's batches need
            warm = run_workload(eng, work)
            print(f"{name}/cache-{cache}: warm-up pass {warm['wall_s']:.1f}s", flush=True)
            r = run_workload(eng, work)
            eng.scheduler.cache.enabled = True
            if args.profile and len(rows) == 0:
                r["profile"] = profile_kernels(lambda: run_workload(eng, work), 1)
                print(f"{name}/cache-{cache} profile: {json.dumps(r['profile'])[:2000]}", flush=True)
            result[f"{name}/cache-{cache}"] = r
            rows.append((f"{name}/cache-{cache}", r))
            print(f"{name}/cache-{cache}: {json.dumps(r)}", flush=True)
            Path(args.out).write_text(json.dumps(result, indent=2))
    eng.shutdown()
    print(f"engine start {start_s:.1f}s", end="")
    if "batch1" in result:
        b1 = result["batch1"]
        print(f"; batch-1 decode {b1['ms_per_token_median']:.2f} ms/token wall "
              f"({b1['runner_ms_median']:.2f} ms in ModelRunner.run; median of {b1['decode_steps']} steps)", end="")
    print()
    print(f"{'workload':<24}{'req/s':>8}{'out tok/s':>11}{'tok/s':>10}{'hit rate':>10}{'prefill tok':>13}{'wall s':>8}")
    for name, r in rows:
        print(f"{name:<24}{r['req_per_s']:>8.2f}{r['output_tok_per_s']:>11.1f}{r['total_tok_per_s']:>10.1f}"
              f"{r['hit_rate']:>10.3f}{r['prefill_tokens_computed']:>13}{r['wall_s']:>8.1f}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
