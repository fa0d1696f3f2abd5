"""Time one fresh prefill step (one sequence, no cached prefix) with each attention implementation.

    python benchmarks/prefill_step.py --model benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --lengths 1024 4096 --impls pallas pallas_cudnn

Also checks that every implementation's last-token logits agree with the first one's.
Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsgl.model.forward import forward, init_kv_cache, step_to_device  # noqa: E402
from jaxsgl.model.loader import load_model  # noqa: E402
from jaxsgl.model.step_input import make_step_input  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--impls", nargs="+", default=["pallas", "pallas_cudnn"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default="prefill_step.json")
    args = ap.parse_args()
    cfg, weights, _ = load_model(args.model, load_format=args.load_format)
    ps = 16
    rows = []
    for T in args.lengths:
        n_pages = T // ps + 1
        ids = np.random.default_rng(T).integers(10, cfg.vocab_size, T).tolist()
        step = step_to_device(make_step_input([(ids, 0, list(range(1, n_pages + 1)))], ps, num_tokens=T))
        ref_logits = None
        for impl in args.impls:
            kv = init_kv_cache(cfg, n_pages + 1, ps, weights.embed.dtype)
            fn = jax.jit(lambda w, kv, s, impl=impl: forward(w, kv, s, cfg=cfg, attn_impl=impl), donate_argnums=(1,))
            logits, kv = fn(weights, kv, step)
            logits = np.asarray(logits[0])
            jax.block_until_ready(kv)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                out, kv = fn(weights, kv, step)
            jax.block_until_ready(out)
            ms = (time.perf_counter() - t0) / args.iters * 1e3
            if ref_logits is None:
                ref_logits, diff = logits, 0.0
            else:
                diff = float(np.abs(logits - ref_logits).max())
            row = {"tokens": T, "impl": impl, "ms": ms, "tok_per_s": T / ms * 1e3,
                   "max_abs_logit_diff_vs_first": diff, "argmax_same": int(logits.argmax()) == int(ref_logits.argmax())}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "rows": rows}, indent=2))
    print(f"{'tokens':>7}{'impl':>14}{'ms':>9}{'tok/s':>10}{'max dlogit':>12}")
    for r in rows:
        print(f"{r['tokens']:>7}{r['impl']:>14}{r['ms']:>9.2f}{r['tok_per_s']:>10.0f}"
              f"{r['max_abs_logit_diff_vs_first']:>12.4f}")


if __name__ == "__main__":
    main()
