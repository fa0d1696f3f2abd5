"""Time one fresh prefill step (one sequence, no cached prefix) with each attention implementation.

    python benchmarks/prefill_step.py --model benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --lengths 1024 4096 --impls pallas pallas_cudnn reference --fp32-ref

Each step compiles as the engine's would (the attention hint kernels.step_hint picks for it).
Also checks every implementation's last-token logits against the first one's and, with
--fp32-ref, against an fp32 run (the same weights upcast, reference attention, matmuls at
"highest" precision): the bf16 `reference` row is the yardstick for the kernels' error.
Prints a table and writes JSON.
    python benchmarks/prefill_step.py --smoke --out /tmp/p.json   # tiny random model on the CPU, the
                                                                  # Pallas kernel in interpret mode (CI)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import tiny_model_dir  # noqa: E402
from jaxsgl import kernels  # noqa: E402
from jaxsgl.model.forward import forward, init_kv_cache, step_to_device  # noqa: E402
from jaxsgl.model.loader import load_model  # noqa: E402
from jaxsgl.model.step_input import make_step_input  # noqa: E402

PS = 16


def prefill_step(cfg, T: int):
    """A one-sequence fresh prefill of T random tokens in pages 1.., and its page count."""
    n_pages = T // PS + 1
    ids = np.random.default_rng(T).integers(10, cfg.vocab_size, T).tolist()
    return make_step_input([(ids, 0, list(range(1, n_pages + 1)))], PS, num_tokens=T), n_pages


def fp32_logits(cfg, weights, lengths: list[int]) -> dict[int, np.ndarray]:
    """Last-token logits of an fp32 run per length (weights upcast, reference attention)."""
    w32 = jax.tree.map(lambda a: a.astype(jnp.float32), weights)
    out = {}
    with jax.default_matmul_precision("highest"):
        for T in lengths:
            step, n_pages = prefill_step(cfg, T)
            kv = init_kv_cache(cfg, n_pages + 1, PS, jnp.float32)
            logits, _ = jax.jit(lambda w, kv, s: forward(w, kv, s, cfg=cfg, attn_impl="reference"))(
                w32, kv, step_to_device(step))
            out[T] = np.asarray(logits[0])
            del kv
    del w32
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF directory or config dir (with --load-format dummy)")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--impls", nargs="+", default=["pallas", "pallas_cudnn"])
    ap.add_argument("--fp32-ref", action="store_true", help="compare logits with an fp32 run")
    ap.add_argument("--fp32-max-len", type=int, default=4096,
                    help="skip the fp32 run above this length (8B at 8k: ~75 GB)")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model, 32 tokens, reference vs pallas_interpret, fp32 check, 2 iters")
    ap.add_argument("--out", default="prefill_step.json")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.load_format = str(tiny_model_dir()), "dummy"
        args.lengths, args.impls, args.fp32_ref, args.iters = [32], ["reference", "pallas_interpret"], True, 2
    if args.model is None:
        ap.error("--model is required (or --smoke)")
    cfg, weights, _ = load_model(args.model, load_format=args.load_format)
    fp32 = fp32_logits(cfg, weights, [T for T in args.lengths if T <= args.fp32_max_len]) if args.fp32_ref else {}
    rows = []
    for T in args.lengths:
        step_host, n_pages = prefill_step(cfg, T)
        step = step_to_device(step_host)
        ref_logits = None
        for impl in args.impls:
            hint = kernels.step_hint(np.diff(step_host.query_start), impl)
            kv = init_kv_cache(cfg, n_pages + 1, PS, weights.embed.dtype)
            fn = jax.jit(lambda w, kv, s, impl=impl, hint=hint: forward(w, kv, s, cfg=cfg, attn_impl=impl, hint=hint),
                         donate_argnums=(1,))
            logits, kv = fn(weights, kv, step)
            logits = np.asarray(logits[0])
            jax.block_until_ready(kv)
            t0 = time.perf_counter()
            for _ in range(args.iters):
                out, kv = fn(weights, kv, step)
            jax.block_until_ready(out)
            ms = (time.perf_counter() - t0) / args.iters * 1e3
            if ref_logits is None:
                ref_logits = logits
            row = {"tokens": T, "impl": impl, "hint": hint._asdict(), "ms": ms, "tok_per_s": T / ms * 1e3,
                   "max_abs_logit_diff_vs_first": float(np.abs(logits - ref_logits).max()),
                   "argmax_same": int(logits.argmax()) == int(ref_logits.argmax())}
            if T in fp32:
                row["max_abs_logit_diff_vs_fp32"] = float(np.abs(logits - fp32[T]).max())
                row["rms_logit_diff_vs_fp32"] = float(np.sqrt(np.mean((logits - fp32[T]) ** 2)))
                row["argmax_same_as_fp32"] = int(logits.argmax()) == int(fp32[T].argmax())
            rows.append(row)
            print(json.dumps(row), flush=True)
            del kv, out
    Path(args.out).write_text(json.dumps({"model": args.model, "device": jax.devices()[0].device_kind,
                                          "argv": sys.argv, "rows": rows}, indent=2))
    nan = float("nan")
    print(f"{'tokens':>7}{'impl':>18}{'ms':>9}{'tok/s':>10}{'dlogit vs 1st':>15}{'vs fp32 max':>13}{'rms':>8}")
    for r in rows:
        print(f"{r['tokens']:>7}{r['impl']:>18}{r['ms']:>9.2f}{r['tok_per_s']:>10.0f}"
              f"{r['max_abs_logit_diff_vs_first']:>15.4f}{r.get('max_abs_logit_diff_vs_fp32', nan):>13.4f}"
              f"{r.get('rms_logit_diff_vs_fp32', nan):>8.4f}")


if __name__ == "__main__":
    main()
