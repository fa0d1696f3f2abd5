"""Time ragged paged attention on the GPU: decode and extend, against baselines and the roofline.

    python benchmarks/attention.py [--out results.json] [--tune] [--quick] [--only decode|extend]
                                   [--budget SECONDS]
    (config sweeps, the Mosaic GPU extend kernel's configs, one call for ncu: benchmarks/attention_sweep.py)
    python benchmarks/attention.py --smoke --out /tmp/a.json   # any backend: tiny shapes, the kernel in
                                                               # Pallas interpret mode, 2 iterations (CI)

Shapes are Llama-3-8B's attention (32 q heads, 8 KV heads, head_dim 128, bf16, page 16).
Decode: batch 1-256 x context 512-32k vs the reference, JAX's bundled
`pallas.ops.gpu.paged_attention`, and the HBM floor (KV bytes / measured copy bandwidth).
Extend: one sequence, cached prefix 0-8k x new tokens 128-4k vs cuDNN dense attention
(`jax.nn.dot_product_attention`) and the FLOP floor (FLOPs / measured bf16 matmul rate).
Each timed call reads KV from a different page-table set (rotating) so L2 does not serve it;
the rotating calls run inside one jit (see `timeit`; `*_call_s` in the JSON: one dispatch each).
Prints a table and writes every number as JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl.kernels import PREFILL_HINT, BlockConfig, write_kv
from jaxsgl.kernels.block_configs import default_configs
from jaxsgl.kernels.ragged_paged_attention import ragged_paged_attention_pallas
from jaxsgl.kernels.reference import ragged_paged_attention_ref

H, KVH, D, PS, DT = 32, 8, 128, 16, jnp.bfloat16
SCALE = D ** -0.5
T0 = time.time()
ITERS, ROUNDS, ROTATIONS = 20, 3, 4  # timeit's defaults; most page-table sets per case
CEILING_SIZES = (1 << 29, 8192)  # copy elements, matmul side
WRITE_KV_SIZES = (1 << 16, (256, 4096))  # pages, token counts


def smoke_setup() -> None:
    """--smoke: tiny shapes, fp32, the Pallas kernel in interpret mode (any backend), 2 iterations."""
    global H, KVH, D, DT, SCALE, ITERS, ROUNDS, ROTATIONS, CEILING_SIZES, WRITE_KV_SIZES
    global ragged_paged_attention_pallas
    H, KVH, D, DT = 4, 2, 64, jnp.float32
    SCALE, ITERS, ROUNDS, ROTATIONS = D ** -0.5, 2, 1, 1  # one set: no chained jit to compile
    CEILING_SIZES, WRITE_KV_SIZES = (1 << 16, 128), (64, (16,))
    ragged_paged_attention_pallas = functools.partial(ragged_paged_attention_pallas, interpret=True)


def timeit(fn, arg_sets, iters: int | None = None, rounds: int | None = None, per_call: bool = False) -> float:
    """Seconds per call of fn: the median over rounds of (wall time of `iters` back-to-back
    async dispatches) / iters. Unless per_call, one dispatch is a jit running fn on every arg
    set in turn, so the host's per-dispatch cost (50-90 us: more than small kernels take on
    the GPU) is shared, as it is inside a model step."""
    iters, rounds = iters or ITERS, rounds or ROUNDS
    if not per_call and len(arg_sets) > 1:
        chained = jax.jit(lambda sets: [fn(*a) for a in sets])
        return timeit(chained, [(list(arg_sets),)], iters, rounds, per_call=True) / len(arg_sets)
    jax.block_until_ready(fn(*arg_sets[0]))
    jax.block_until_ready(fn(*arg_sets[-1]))
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        out = [fn(*arg_sets[i % len(arg_sets)]) for i in range(iters)]
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / iters)
    return float(np.median(times))


def ceilings() -> dict:
    """Measured HBM copy bandwidth (read + write bytes) and bf16 matmul rate."""
    n_copy, n_mm = CEILING_SIZES
    x = jax.random.normal(jax.random.key(0), (n_copy,), jnp.bfloat16)  # 1 GiB
    copy = jax.jit(lambda a: a * 1.5 + 1.0)
    t = timeit(copy, [(x,)], iters=10)
    bw = 2 * x.nbytes / t
    a = jax.random.normal(jax.random.key(1), (n_mm, n_mm), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(2), (n_mm, n_mm), jnp.bfloat16)
    t = timeit(jax.jit(lambda p, q: p @ q), [(a, b)], iters=10)
    del x, a, b
    return {"copy_bw_Bps": bw, "matmul_flops": 2 * n_mm ** 3 / t}


def paged_sets(rng, batch: int, ctx: int, q_len: int, rotations: int, ps: int = PS):
    """`rotations` arg sets sharing one big KV pool, each with its own random page table."""
    P = -(-ctx // ps)
    n = batch * P * rotations
    k = jax.random.normal(jax.random.key(3), (n, ps, KVH, D), DT)
    v = jax.random.normal(jax.random.key(4), (n, ps, KVH, D), DT)
    perm = rng.permutation(n).astype(np.int32).reshape(rotations, batch, P)
    q = jnp.asarray(rng.standard_normal((batch * q_len, H, D)), DT)
    qs = jnp.arange(batch + 1, dtype=jnp.int32) * q_len
    kv = jnp.full((batch,), ctx, jnp.int32)
    return k, v, [(q, k, v, qs, kv, jnp.asarray(perm[r])) for r in range(rotations)]


def decode_grid(batch: int, ctx: int) -> list[BlockConfig]:
    """--tune's decode configs: each split count leaving >= 64 KV tokens a split and <= 4,096 programs,
    with KV blocks of 64 (3 or 4 stages), 128 (4 warps and 2 stages, or 8 and 3) and 256 tokens."""
    return [cfg for s in (1, 2, 4, 8, 16, 32, 64) if s == 1 or (ctx // s >= 64 and batch * KVH * s <= 4096)
            for cfg in (BlockConfig(16, 64, s, 4, 3), BlockConfig(16, 64, s, 4, 4), BlockConfig(16, 128, s, 4, 2),
                        BlockConfig(16, 128, s, 8, 3), BlockConfig(16, 256, s, 8, 2))]


def bench_decode(rng, ceil, cases, tune: bool) -> list[dict]:
    from jax.experimental.pallas.ops.gpu.paged_attention import paged_attention as bundled
    rows = []
    kernel = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE))
    decode_only = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE, max_q_len=1))
    ref = jax.jit(functools.partial(ragged_paged_attention_ref, sm_scale=SCALE))
    for batch, ctx in cases:
        if time.time() - T0 > BUDGET:
            print(f"# budget reached; skipping decode {batch}x{ctx}", flush=True)
            continue
        kv_bytes = 2 * batch * ctx * KVH * D * 2
        rot = int(max(1, min(ROTATIONS, 2e9 // kv_bytes)))
        k, v, sets = paged_sets(rng, batch, ctx, 1, rot)
        row = {"batch": batch, "ctx": ctx, "kv_bytes": kv_bytes,
               "floor_s": kv_bytes / ceil["copy_bw_Bps"]}
        row["pallas_s"] = timeit(kernel, sets)
        row["pallas_call_s"] = timeit(kernel, sets, per_call=True)
        row["pallas_max_q_len_1_s"] = timeit(decode_only, sets)  # the engine's decode steps
        row["config"] = str(default_configs(batch, batch, ctx // PS, PS, H, KVH, D, DT)[0])
        out = np.asarray(kernel(*sets[0]), np.float32)
        if kv_bytes <= 1e9 and ctx <= 8192:
            want = np.asarray(ref(*sets[0]), np.float32)
            row["max_err_vs_ref"] = float(np.abs(out - want).max())
            row["ref_s"] = timeit(ref, sets[:1], iters=3, rounds=1)
        try:  # bundled kernel: KV layout [KVH, pages, page_size, D]
            kt, vt = (jnp.transpose(x, (2, 0, 1, 3)) for x in (k, v))
            bsets = [(s[0] * SCALE, kt, vt, s[5], s[4]) for s in sets]  # it applies no scale
            row["bundled_s"] = timeit(jax.jit(bundled), bsets)
            row["bundled_err"] = float(np.abs(np.asarray(jax.jit(bundled)(*bsets[0]), np.float32) - out).max())
            del kt, vt, bsets
        except Exception as e:  # noqa: BLE001 -- record why the baseline could not run
            row["bundled_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        for cfg in decode_grid(batch, ctx) if tune else ():  # as the engine's decode steps run it
            f = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE, max_q_len=1,
                                          short_config=cfg))
            row[f"tune_{tuple(cfg)}"] = timeit(f, sets)
        row["pallas_TBps"] = kv_bytes / row["pallas_s"] / 1e12
        row["pallas_frac_copy_bw"] = kv_bytes / row["pallas_s"] / ceil["copy_bw_Bps"]
        print(json.dumps(row), flush=True)
        rows.append(row)
        del k, v, sets
    return rows


def bench_extend(rng, ceil, cases, tune: bool) -> list[dict]:
    rows = []
    kernel = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE))
    # the engine's variant for steps whose every sequence has >= 64 new tokens (kernels.step_hint)
    hinted = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE,
                                       min_q_len=PREFILL_HINT.min_q_len))
    ref = jax.jit(functools.partial(ragged_paged_attention_ref, sm_scale=SCALE))
    for prefix, new in cases:
        if time.time() - T0 > BUDGET:
            print(f"# budget reached; skipping extend {prefix}+{new}", flush=True)
            continue
        ctx = prefix + new
        k, v, sets = paged_sets(rng, 1, ctx, new, ROTATIONS)
        sets = [(s[0], s[1], s[2], s[3], s[4], s[5]) for s in sets]
        flops = 4 * H * D * (new * prefix + new * (new + 1) / 2)
        row = {"prefix": prefix, "new": new, "flops": flops, "floor_s": flops / ceil["matmul_flops"]}
        row["pallas_s"] = timeit(kernel, sets)
        row["pallas_call_s"] = timeit(kernel, sets, per_call=True)
        row["pallas_prefill_hint_s"] = timeit(hinted, sets)
        row["prefill_hint_max_diff"] = float(np.abs(np.asarray(hinted(*sets[0]), np.float32)
                                                    - np.asarray(kernel(*sets[0]), np.float32)).max())
        row["config"] = str(default_configs(new, 1, -(-ctx // PS), PS, H, KVH, D, DT)[1])
        out = np.asarray(kernel(*sets[0]), np.float32)
        if new <= 1024:
            want = np.asarray(ref(*sets[0]), np.float32)
            row["max_err_vs_ref"] = float(np.abs(out - want).max())
            row["ref_s"] = timeit(ref, sets[:1], iters=2, rounds=1)
        # cuDNN dense on contiguous K/V; causal only when there is no prefix (its mask is
        # top-left aligned), so with a prefix it does the full new x ctx rectangle.
        dsets = [(s[0][None], jax.random.normal(jax.random.key(5 + 2 * i), (1, ctx, KVH, D), DT),
                  jax.random.normal(jax.random.key(6 + 2 * i), (1, ctx, KVH, D), DT))
                 for i, s in enumerate(sets)]  # distinct K/V per call, like the rotating pages
        causal = prefix == 0
        try:
            dense = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=causal,
                                              scale=SCALE, implementation="cudnn"))
            row["cudnn_s"] = timeit(dense, dsets)
            row["cudnn_call_s"] = timeit(dense, dsets, per_call=True)
            row["cudnn_flops"] = flops if causal else 4 * H * D * new * ctx
            row["cudnn_TFLOPs"] = row["cudnn_flops"] / row["cudnn_s"] / 1e12
            row["pallas_over_cudnn_time"] = row["pallas_s"] / row["cudnn_s"]
            row["hinted_over_cudnn_time"] = row["pallas_prefill_hint_s"] / row["cudnn_s"]
            row["pallas_over_cudnn_flop_normalized"] = (row["pallas_s"] / flops) / (row["cudnn_s"] / row["cudnn_flops"])
        except Exception as e:  # noqa: BLE001
            row["cudnn_error"] = f"{type(e).__name__}: {str(e)[:200]}"
        if tune:
            for cfg in (BlockConfig(64, 32, 1, 4, 2), BlockConfig(64, 32, 1, 4, 3),
                        BlockConfig(64, 16, 1, 4, 3), BlockConfig(32, 32, 1, 4, 2),
                        BlockConfig(128, 32, 1, 8, 2), BlockConfig(64, 64, 1, 4, 2),
                        BlockConfig(32, 16, 1, 2, 3), BlockConfig(128, 64, 1, 8, 3)):
                f = jax.jit(functools.partial(ragged_paged_attention_pallas, sm_scale=SCALE, long_config=cfg))
                row[f"tune_{tuple(cfg)}"] = timeit(f, sets)
        row["pallas_TFLOPs"] = flops / row["pallas_s"] / 1e12
        print(json.dumps(row), flush=True)
        rows.append(row)
        del k, v, sets, dsets
    return rows


def bench_write_kv() -> list[dict]:
    rows = []
    n, token_counts = WRITE_KV_SIZES
    for T in token_counts:
        kp = jax.random.normal(jax.random.key(7), (n, PS, KVH, D), DT)
        vp = jax.random.normal(jax.random.key(8), (n, PS, KVH, D), DT)
        k = jax.random.normal(jax.random.key(9), (T, KVH, D), DT)
        slots = jnp.asarray(np.random.default_rng(0).permutation(n * PS)[:T].astype(np.int32))
        f = jax.jit(functools.partial(write_kv, impl="auto"), donate_argnums=(0, 1))
        for _ in range(3):
            kp, vp = f(kp, vp, k, k, slots)
        jax.block_until_ready(kp)
        t = time.perf_counter()
        for _ in range(20):
            kp, vp = f(kp, vp, k, k, slots)
        jax.block_until_ready(kp)
        s = (time.perf_counter() - t) / 20
        rows.append({"tokens": T, "write_kv_s": s, "bytes_written": 2 * T * KVH * D * 2})
        print(json.dumps(rows[-1]), flush=True)
        del kp, vp
    return rows


def table(res: dict) -> str:
    c = res["ceilings"]
    lines = [f"device {res['device']}  jax {res['jax']}  copy {c['copy_bw_Bps'] / 1e12:.2f} TB/s  "
             f"bf16 matmul {c['matmul_flops'] / 1e12:.0f} TFLOP/s", "",
             "us per call, calls chained in one jit; (call): one dispatch per call", "",
             "decode  batch   ctx | pallas us  TB/s  %copy | (call) | max_q_len=1 | bundled us | ref us | floor us",
             "---------------------+-----------------------+--------+-------------+------------+--------+---------"]
    nan = float("nan")
    for r in res["decode"]:
        lines.append(f"        {r['batch']:5d} {r['ctx']:5d} | {r['pallas_s'] * 1e6:9.1f} {r['pallas_TBps']:5.2f} "
                     f"{100 * r['pallas_frac_copy_bw']:5.0f}% | {r.get('pallas_call_s', nan) * 1e6:6.1f} | "
                     f"{r.get('pallas_max_q_len_1_s', nan) * 1e6:11.1f} | "
                     f"{r.get('bundled_s', nan) * 1e6:10.1f} | "
                     f"{r.get('ref_s', nan) * 1e6:6.0f} | {r['floor_s'] * 1e6:8.1f}")
    lines += ["", "extend: 'hinted' is the engine's variant for steps of >= 64 new tokens per sequence",
              "extend prefix  new | pallas us TFLOP/s | (call) | hinted us | cudnn us TFLOP/s | (call) | "
              "ratio time | hinted | ratio flop-norm | floor us",
              "-------------------+-------------------+--------+-----------+------------------+--------+"
              "------------+--------+-----------------+---------"]
    for r in res["extend"]:
        lines.append(f"       {r['prefix']:6d} {r['new']:4d} | {r['pallas_s'] * 1e6:9.1f} {r['pallas_TFLOPs']:7.0f} | "
                     f"{r.get('pallas_call_s', nan) * 1e6:6.1f} | "
                     f"{r.get('pallas_prefill_hint_s', nan) * 1e6:9.1f} | "
                     f"{r.get('cudnn_s', nan) * 1e6:8.1f} {r.get('cudnn_TFLOPs', nan):7.0f} | "
                     f"{r.get('cudnn_call_s', nan) * 1e6:6.1f} | "
                     f"{r.get('pallas_over_cudnn_time', nan):10.2f} | "
                     f"{r.get('hinted_over_cudnn_time', nan):6.2f} | "
                     f"{r.get('pallas_over_cudnn_flop_normalized', nan):15.2f} | {r['floor_s'] * 1e6:8.1f}")
    for r in res.get("write_kv", []):
        lines.append(f"write_kv {r['tokens']} tokens: {r['write_kv_s'] * 1e6:.1f} us")
    return "\n".join(lines)


def main() -> None:
    global BUDGET
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="attention_results.json")
    ap.add_argument("--tune", action="store_true", help="also time alternative block configs")
    ap.add_argument("--quick", action="store_true", help="a few cases only")
    ap.add_argument("--only", choices=("decode", "extend"), help="time only this half")
    ap.add_argument("--budget", type=float, default=420.0, help="stop starting new cases after this many s")
    ap.add_argument("--decode-cases", nargs="+", default=None, metavar="BATCH,CTX",
                    help="decode cases to time instead of the default grid (with --tune: each one tuned)")
    ap.add_argument("--smoke", action="store_true", help="tiny shapes in interpret mode on any backend (CI)")
    a = ap.parse_args()
    BUDGET = a.budget
    warnings.filterwarnings("ignore")
    if a.smoke:
        smoke_setup()
    elif jax.default_backend() != "gpu":
        sys.exit("benchmarks/attention.py needs a GPU")
    rng = np.random.default_rng(0)
    res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "argv": sys.argv,
           "ceilings": ceilings()}
    print(json.dumps(res), flush=True)
    if a.smoke:
        dec, ext = [(2, 64)], [(0, 64)]
    elif a.quick:
        dec, ext = [(32, 2048), (128, 8192)], [(0, 4096), (8192, 1024)]
    else:
        dec = [(b, c) for b in (1, 8, 32, 64, 128, 256) for c in (512, 2048, 8192, 32768)
               if 2 * b * c * KVH * D * 2 <= 9e9]
        ext = [(p, n) for p in (0, 512, 2048, 8192) for n in (128, 512, 1024, 4096)]
    if a.decode_cases:
        dec = [tuple(int(x) for x in c.split(",")) for c in a.decode_cases]
    tune_dec = (set(dec) if a.decode_cases else {(32, 2048), (128, 8192), (1, 32768)}) if a.tune else set()
    tune_ext = {(0, 4096), (8192, 1024)} if a.tune else set()
    dec, ext = ([] if a.only == "extend" else dec), ([] if a.only == "decode" else ext)
    res["write_kv"] = bench_write_kv() if a.only is None else []
    res["decode"] = [r for c in dec for r in bench_decode(rng, res["ceilings"], [c], c in tune_dec)]
    res["extend"] = [r for c in ext for r in bench_extend(rng, res["ceilings"], [c], c in tune_ext)]
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
    print(table(res), flush=True)


BUDGET = 420.0
if __name__ == "__main__":
    main()
