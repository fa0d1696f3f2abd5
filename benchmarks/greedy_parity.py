"""Greedy parity: are a model's greedy tokens the same whichever way the engine batches them?

    python benchmarks/greedy_parity.py --model-path .gpu/model8b --load-format dummy --out parity.json
    python benchmarks/greedy_parity.py ... --enable-deterministic-inference   # the batch-invariant step
    python benchmarks/greedy_parity.py ... --temperature 0.8             # seeded samples (prompt i: seed i)
    python benchmarks/greedy_parity.py --smoke --out /tmp/g.json         # tiny random model (CI)

One workload (random prompts, a share of them behind a common prefix, so the radix cache has work)
runs greedy in a fresh Engine per schedule:
  sync       overlap scheduling off, radix cache on: the reference
  overlap    overlap scheduling on (the default): rows join and leave batches a step apart
  no-cache   overlap off, radix cache off: shared prefixes are computed again, in other batches
For each schedule: rows token-identical to the reference, and where a row parts, its position and the
reference's top-2 logprob gap there (a gap near 0 is a near-tie that rounding can flip). On the CPU
(float32, reference attention) every row must match; on a GPU in bf16 a row whose batch differs may
part unless the step is batch-invariant (--enable-deterministic-inference; XLA flags via XLA_FLAGS).
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import tiny_model_dir  # noqa: E402

SCHEDULES = {
    "sync": {"disable_overlap_schedule": True},
    "overlap": {},
    "no-cache": {"disable_overlap_schedule": True, "disable_radix_cache": True},
}


def workload(rng: np.random.Generator, n: int, lens: tuple[int, int], prefix: int, vocab: int) -> list[list[int]]:
    """n random prompts of lens[0]..lens[1] tokens; every other one starts with one shared prefix."""
    shared = rng.integers(100, vocab, prefix).tolist()
    out = []
    for i in range(n):
        body = rng.integers(100, vocab, int(rng.integers(lens[0], lens[1] + 1))).tolist()
        out.append(shared + body if i % 2 else body)
    return out


def run_schedule(args, prompts: list[list[int]], options: dict) -> tuple[list[dict], float]:
    """Greedy outputs (ids and per-token top-2 logprobs) of one fresh Engine, and its wall seconds."""
    from jaxsgl import Engine

    eng = Engine(args.model_path, load_format=args.load_format, dtype=args.dtype, skip_tokenizer_init=True,
                 max_running_requests=args.max_running_requests, chunked_prefill_size=args.chunked_prefill_size,
                 seq_buckets=args.seq_buckets, attention_backend=args.attention_backend,
                 enable_deterministic_inference=args.enable_deterministic_inference, **options)
    try:
        t0 = time.perf_counter()
        params = [{"temperature": args.temperature, "max_new_tokens": args.max_new_tokens, "ignore_eos": True,
                   **({"seed": i} if args.temperature > 0 else {})} for i in range(len(prompts))]
        res = eng.generate(input_ids=prompts, sampling_params=params, return_logprob=True, top_logprobs_num=2)
        wall = time.perf_counter() - t0
    finally:
        eng.shutdown()
    rows = [{"ids": r["output_ids"], "top2": [[t[0][0], t[1][0]] for t in r["meta_info"]["output_top_logprobs"]]}
            for r in res]
    return rows, wall


def compare(rows: list[dict], ref: list[dict]) -> dict:
    """Rows identical to ref; for each that parts: its index, first differing position and ref's top-2 gap there."""
    parted = []
    for i, (a, b) in enumerate(zip(rows, ref)):
        d = next((j for j, (p, q) in enumerate(zip(a["ids"], b["ids"])) if p != q), None)
        if d is None and len(a["ids"]) != len(b["ids"]):
            d = min(len(a["ids"]), len(b["ids"]))
        if d is not None:
            gap = b["top2"][d][0] - b["top2"][d][1] if d < len(b["top2"]) else None
            parted.append({"row": i, "position": d, "top2_gap": None if gap is None else round(gap, 5)})
    return {"identical": len(ref) - len(parted), "of": len(ref), "parted": parted}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--dtype", default="auto", help="auto (the checkpoint's) | bfloat16 | float32")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, nargs=2, default=(40, 200), metavar=("MIN", "MAX"))
    ap.add_argument("--shared-prefix", type=int, default=96, help="tokens every other prompt starts with")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-running-requests", type=int, default=32)
    ap.add_argument("--chunked-prefill-size", type=int, default=512)
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--enable-deterministic-inference", action="store_true",
                    help="batch-invariant attention and GEMMs (EngineOptions.enable_deterministic_inference)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="> 0: sampled, prompt i with seed i (the same tokens in every schedule all the same)")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, 6 short prompts (CI)")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.smoke:
        args.model_path, args.load_format = str(tiny_model_dir()), "dummy"
        args.num_prompts, args.input_len, args.shared_prefix, args.max_new_tokens = 6, (4, 12), 16, 4
        args.max_running_requests, args.chunked_prefill_size, args.seq_buckets = 4, 32, [1, 2, 4]
    if args.model_path is None:
        ap.error("--model-path is required (or --smoke)")
    vocab = json.loads((Path(args.model_path) / "config.json").read_text())["vocab_size"]
    prompts = workload(np.random.default_rng(args.seed), args.num_prompts, tuple(args.input_len),
                       args.shared_prefix, vocab)
    runs = {name: run_schedule(args, prompts, SCHEDULES[name]) for name in args.schedules}
    ref_name = args.schedules[0]
    ref = runs[ref_name][0]
    summary = {name: {**compare(rows, ref), "wall_s": round(wall, 2)} for name, (rows, wall) in runs.items()}
    settings = {k: v for k, v in os.environ.items() if k.startswith("JAXSGL_") or k == "XLA_FLAGS"}
    if args.enable_deterministic_inference:
        settings["enable_deterministic_inference"] = True
    if args.temperature > 0:
        settings["temperature"] = args.temperature
    print(f"greedy parity vs {ref_name}; settings: {settings or 'defaults'}")
    print(f"{'schedule':<10} {'identical':>10} {'wall s':>7}  first parting (row@position: top-2 gap)")
    for name, s in summary.items():
        parts = ", ".join(f"{p['row']}@{p['position']}: {p['top2_gap']}" for p in s["parted"][:8])
        more = f" (+{len(s['parted']) - 8})" if len(s["parted"]) > 8 else ""
        print(f"{name:<10} {s['identical']:>5}/{s['of']:<4} {s['wall_s']:>7.1f}  {parts}{more}")
    if args.out:
        Path(args.out).write_text(json.dumps({"reference": ref_name, "settings": settings, "args": {
            k: v for k, v in vars(args).items() if k != "out"}, "schedules": summary,
            "outputs": {name: [r["ids"] for r in rows] for name, (rows, _) in runs.items()}}, indent=1))


if __name__ == "__main__":
    main()
