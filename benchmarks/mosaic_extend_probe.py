"""Where the Mosaic GPU extend kernel's time goes, next to JAX's own FA3 kernel (Hopper only).

    python benchmarks/mosaic_extend_probe.py --time --out probe.json
        kernel-only times (plan precomputed) vs the full dispatch, bf16 vs f16, page 16 vs 128,
        and jax.experimental.pallas.ops.gpu.attention_mgpu (contiguous f16 KV) on the same tokens
    MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_SASS=1 MOSAIC_GPU_DUMP_TO=dir \\
        python benchmarks/mosaic_extend_probe.py --compile-only
        compiles both kernels once (the dumps land in dir: registers, spills, SASS)
    python benchmarks/mosaic_extend_probe.py --profile dir
        Mosaic GPU's in-kernel profiler: per-warpgroup time in the kernel's named regions
        (wait_k, qk, softmax, wait_v, pv; memory warpgroup: wait_free), summed over blocks
    python benchmarks/mosaic_extend_probe.py --kernels 512,1024 0,4096
        GPU time of every kernel the default dispatch launches (jax.profiler / CUPTI), next to cuDNN
    python benchmarks/mosaic_extend_probe.py --smoke --out /tmp/m.json
        any backend: the kernel alone in Pallas' GPU interpret mode on one tiny extend, checked
        against the reference (CI: that the script and the kernel's entry point still run)

Shapes as benchmarks/attention.py (Llama-3-8B attention: 32 q heads, 8 KV heads, head_dim 128).
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl.kernels import PREFILL_HINT
from jaxsgl.kernels.paged_extend_mosaic import (MOSAIC_MIN_Q, TILE_TOKENS, MosaicConfig,
                                                paged_extend_mosaic, plan_tiles)
from jaxsgl.kernels.ragged_paged_attention import ragged_paged_attention_pallas
from jaxsgl.kernels.reference import ragged_paged_attention_ref

from _common import gpu_kernel_times  # noqa: E402
from attention import timeit  # benchmarks/attention.py (this script's directory is on sys.path)

H, KVH, D = 32, 8, 128
SCALE = D ** -0.5
CASES = ((0, 4096), (8192, 4096))


def paged_inputs(prefix: int, new: int, dtype, ps: int, rotations: int = 4):
    """(q, k_pages, v_pages, query_start, kv_lens, page_table) sets over one shared KV pool."""
    ctx = prefix + new
    P = -(-ctx // ps)
    n = P * rotations
    rng = np.random.default_rng(0)
    k = jax.random.normal(jax.random.key(3), (n, ps, KVH, D), dtype)
    v = jax.random.normal(jax.random.key(4), (n, ps, KVH, D), dtype)
    q = jax.random.normal(jax.random.key(5), (new, H, D), dtype)
    qs = jnp.asarray([0, new], jnp.int32)
    kv = jnp.asarray([ctx], jnp.int32)
    perm = rng.permutation(n).astype(np.int32).reshape(rotations, 1, P)
    return [(q, k, v, qs, kv, jnp.asarray(perm[r])) for r in range(rotations)]


def kernel_only(sets, cfg: MosaicConfig, interpret: bool = False):
    """(fn, arg sets) calling paged_extend_mosaic directly with a precomputed tile plan."""
    q, _, _, qs, kv, _ = sets[0]
    T = q.shape[0]
    plan = plan_tiles(qs, kv, T, MOSAIC_MIN_Q, T // TILE_TOKENS + 1)
    fn = jax.jit(functools.partial(paged_extend_mosaic, sm_scale=SCALE, cfg=cfg, interpret=interpret))
    return fn, [(plan, s[0], s[1], s[2], s[5]) for s in sets]


def fa3(prefix: int, new: int):
    """(fn, arg sets) for JAX's attention_mgpu on contiguous f16 K/V (causal iff no prefix)."""
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    ctx = prefix + new
    q, k, v = (jax.random.normal(jax.random.key(i), (1, n, h, D), jnp.float16)
               for i, (n, h) in enumerate(((new, H), (ctx, KVH), (ctx, KVH))))
    cfg = attention_mgpu.TuningConfig(block_q=64, block_kv=128, max_concurrent_steps=2,
                                      causal=prefix == 0)
    return jax.jit(lambda a, b, c: attention_mgpu.attention(a, b, c, cfg)), [(q, k, v)]


def bench_time() -> list[dict]:
    rows = []
    for prefix, new in CASES:
        flops = 4 * H * D * (new * prefix + new * (new + 1) / 2)
        variants = []
        for name, dtype, ps in (("kernel bf16 p16", jnp.bfloat16, 16), ("kernel f16 p16", jnp.float16, 16),
                                ("kernel bf16 p128", jnp.bfloat16, 128)):
            variants.append((name, flops, *kernel_only(paged_inputs(prefix, new, dtype, ps), MosaicConfig())))
        full = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE,
                                         long_config=MosaicConfig()))
        variants.append(("dispatch bf16 p16", flops, full, paged_inputs(prefix, new, jnp.bfloat16, 16)))
        fa3_flops = flops if prefix == 0 else 4 * H * D * new * (prefix + new)
        variants.append(("attention_mgpu f16", fa3_flops, *fa3(prefix, new)))
        for name, fl, fn, sets in variants:
            t = timeit(fn, sets, per_call=True)
            row = {"prefix": prefix, "new": new, "variant": name, "us": t * 1e6, "TFLOPs": fl / t / 1e12}
            print(json.dumps(row), flush=True)
            rows.append(row)
    print(f"\n| prefix | new | variant | us | TFLOP/s |\n|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['prefix']} | {r['new']} | {r['variant']} | {r['us']:.1f} | {r['TFLOPs']:.0f} |")
    return rows


def bench_smoke() -> list[dict]:
    """--smoke: one tiny extend (one q head, one KV head, head_dim 64, 64 new tokens) through the kernel
    alone in GPU interpret mode (simulated warpgroups: about 10 s a call), called once (the time includes
    tracing), and its error vs the reference."""
    global H, KVH, D, SCALE
    H, KVH, D = 1, 1, 64
    SCALE = D ** -0.5
    rows = []
    for prefix, new in ((0, MOSAIC_MIN_Q),):
        sets = paged_inputs(prefix, new, jnp.bfloat16, 16, rotations=1)
        fn, args = kernel_only(sets, MosaicConfig(block_k=64), interpret=True)
        t0 = time.perf_counter()
        got = jax.block_until_ready(fn(*args[0]))
        t = time.perf_counter() - t0
        want = ragged_paged_attention_ref(*sets[0], sm_scale=SCALE).astype(jnp.float32)
        err = float(jnp.abs(got.astype(jnp.float32) - want).max())
        rows.append({"prefix": prefix, "new": new, "variant": "kernel bf16 p16 (interpret)", "us": t * 1e6,
                     "max_err_vs_ref": err})
        print(json.dumps(rows[-1]), flush=True)
    print("\n| prefix | new | variant | us | max err vs ref |\n|---:|---:|---|---:|---:|")
    for r in rows:
        print(f"| {r['prefix']} | {r['new']} | {r['variant']} | {r['us']:.0f} | {r['max_err_vs_ref']:.2e} |")
    return rows


def compile_only() -> None:
    """Compile and run each kernel once (for the MOSAIC_GPU_DUMP_* environment variables)."""
    fn, sets = kernel_only(paged_inputs(0, 4096, jnp.bfloat16, 16), MosaicConfig())
    jax.block_until_ready(fn(*sets[0]))
    fn, sets = fa3(0, 4096)
    jax.block_until_ready(fn(*sets[0]))


def profile(out_dir: str) -> dict:
    """Run the kernel once under Mosaic GPU's profiler; per-warpgroup time per named region."""
    from jax.experimental.pallas import mosaic_gpu as plgpu
    os.makedirs(out_dir, exist_ok=True)
    plgpu.CompilerParams = functools.partial(plgpu.CompilerParams, profile_space=400,
                                             profile_dir=out_dir)
    summary = {}
    for prefix, new in CASES[:1]:
        fn, sets = kernel_only(paged_inputs(prefix, new, jnp.bfloat16, 16), MosaicConfig())
        jax.block_until_ready(fn(*sets[0]))
        jax.effects_barrier()
        trace = max(glob.glob(os.path.join(out_dir, "*-trace.json")), key=os.path.getmtime)
        summary[f"{prefix}+{new}"] = summarise(json.load(open(trace))["traceEvents"])
    print(json.dumps(summary, indent=1))
    return summary


def summarise(events: list[dict]) -> dict:
    """Total microseconds per (warpgroup, region) and per warpgroup span, over all blocks."""
    per = collections.defaultdict(float)
    span: dict[int, list[float]] = {}
    stacks: dict[int, list[dict]] = collections.defaultdict(list)
    for e in events:
        tid = e["tid"]
        s = span.setdefault(tid, [e["ts"], e["ts"]])
        s[0], s[1] = min(s[0], e["ts"]), max(s[1], e["ts"])
        if e["ph"] == "B":
            stacks[tid].append(e)
        else:
            b = stacks[tid].pop()
            per[f"wg{(tid - 1) % 3}/{b['name']}"] += e["ts"] - b["ts"]
    busy = collections.defaultdict(float)
    for tid, (a, b) in span.items():
        busy[f"wg{(tid - 1) % 3}/span"] += b - a
    return {k: round(v, 1) for k, v in sorted({**per, **busy}.items())}


def device_kernels(fn, sets, iters: int = 5) -> dict:
    """GPU time per call of each kernel fn launches (CUPTI trace via jax.profiler), plus the
    GPU's busy span per call: the calls run chained in one jit, `iters` times."""
    chained = jax.jit(lambda s: [fn(*a) for a in s])
    per, span = gpu_kernel_times(lambda: chained(list(sets)), iters)
    if not per:
        raise RuntimeError("no GPU kernels in the trace")
    n = iters * len(sets)
    res = {k: round(v / n / 1e3, 2) for k, v in sorted(per.items(), key=lambda kv: -kv[1])}
    return {"kernels_us": res, "sum_us": round(sum(per.values()) / n / 1e3, 2),
            "span_us": round(span / n / 1e3, 2)}


def bench_kernels(cases: list[tuple[int, int]]) -> list[dict]:
    """Per-kernel GPU time of the default dispatch, of its variant for steps of >= 64 new tokens
    per sequence (kernels.PREFILL_HINT, the engine's prefill steps) and of cuDNN on each extend."""
    rows = []
    full = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE))
    hinted = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE,
                                       min_q_len=PREFILL_HINT.min_q_len))
    for prefix, new in cases:
        ctx = prefix + new
        sets = paged_inputs(prefix, new, jnp.bfloat16, 16)
        dense = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=prefix == 0,
                                          scale=SCALE, implementation="cudnn"))
        dsets = [(s[0][None], jax.random.normal(jax.random.key(10 + i), (1, ctx, KVH, D), jnp.bfloat16),
                  jax.random.normal(jax.random.key(20 + i), (1, ctx, KVH, D), jnp.bfloat16))
                 for i, s in enumerate(sets)]
        for name, fn, args in (("dispatch", full, sets), ("prefill_hint", hinted, sets), ("cudnn", dense, dsets)):
            row = {"prefix": prefix, "new": new, "variant": name, **device_kernels(fn, args)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time", action="store_true")
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--profile", metavar="DIR")
    ap.add_argument("--kernels", nargs="*", metavar="PREFIX,NEW",
                    help="per-kernel GPU time (profiler) of the dispatch and cuDNN on these extends")
    ap.add_argument("--smoke", action="store_true", help="one tiny case in interpret mode on any backend (CI)")
    ap.add_argument("--out", help="write results as JSON here")
    a = ap.parse_args()
    res = {"device": str(jax.devices()[0].device_kind), "jax": jax.__version__}
    if a.smoke:
        res["smoke"] = bench_smoke()
    if a.compile_only:
        compile_only()
    if a.time:
        res["time"] = bench_time()
    if a.kernels:
        res["kernels"] = bench_kernels([tuple(int(x) for x in c.split(",")) for c in a.kernels])
    if a.profile:
        res["profile"] = profile(a.profile)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
