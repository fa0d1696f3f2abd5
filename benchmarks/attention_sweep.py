"""Sweeps of the Pallas attention kernel's launch configs on the GPU (moved out of attention.py, whose
helpers and shapes they use: Llama-3-8B's attention, page 16):

    python benchmarks/attention_sweep.py --sweep --out s.json    # extend and decode configs, page size 1 vs 16
    python benchmarks/attention_sweep.py --final --out f.json    # defaults on target cases, single loop, page 1,
                                                                 # JAX's bundled dense Pallas mha
    python benchmarks/attention_sweep.py --mosaic --out m.json   # extend: Mosaic GPU configs vs Triton vs cuDNN
    python benchmarks/attention_sweep.py --ncu PREFIX,NEW,rows,block_k,splits,warps,stages,reverse  # one call
    python benchmarks/attention_sweep.py --smoke --out /tmp/s.json  # any backend: tiny shapes, interpret mode (CI)

Each sweep prints a JSON line per config and writes them all as JSON.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import warnings

import jax
import numpy as np

import attention as A  # benchmarks/attention.py (this script's directory is on sys.path)
from jaxsgl.kernels import BlockConfig
from jaxsgl.kernels.paged_extend_mosaic import MosaicConfig


def cudnn_time(prefix: int, new: int) -> float:
    """Seconds per cuDNN dense attention call (causal without a prefix), NaN where cuDNN cannot run."""
    ctx = prefix + new
    qd, kd, vd = (jax.random.normal(jax.random.key(i), (1, n, h, A.D), A.DT)
                  for i, (n, h) in enumerate([(new, A.H), (ctx, A.KVH), (ctx, A.KVH)]))
    dense = jax.jit(functools.partial(jax.nn.dot_product_attention, is_causal=prefix == 0,
                                      scale=A.SCALE, implementation="cudnn"))
    try:
        return A.timeit(dense, [(qd, kd, vd)])
    except Exception:  # noqa: BLE001 -- no cuDNN here (the CPU smoke run): the ratios come out NaN
        return float("nan")


def bench_sweep(rng, ext_cases, long_cfgs, dec_cases, short_cfgs, page1: bool = True,
                with_default: bool = True) -> dict:
    """Alternative block configs (and page size 1) on chosen cases, each vs the default."""
    out = {"extend": [], "decode": [], "page1": []}
    for prefix, new in ext_cases:
        k, v, sets = A.paged_sets(rng, 1, prefix + new, new, 4)
        flops = 4 * A.H * A.D * (new * prefix + new * (new + 1) / 2)
        cud = cudnn_time(prefix, new)
        cud_flops = flops if prefix == 0 else 4 * A.H * A.D * new * (prefix + new)
        want = np.asarray(A.ragged_paged_attention_ref(*sets[0], sm_scale=A.SCALE), np.float32) if new <= 512 and prefix <= 2048 else None
        for cfg in [None] * with_default + long_cfgs:
            f = jax.jit(functools.partial(A.ragged_paged_attention_pallas, sm_scale=A.SCALE, long_config=cfg))
            try:
                t = A.timeit(f, sets)
            except Exception as e:  # noqa: BLE001 - a config that does not compile is a result
                row = {"prefix": prefix, "new": new, "config": str(cfg), "error": str(e)[:2000]}
                print(json.dumps(row), flush=True)
                out["extend"].append(row)
                continue
            row = {"prefix": prefix, "new": new, "config": str(cfg or "default"), "us": t * 1e6,
                   "TFLOPs": flops / t / 1e12, "ratio_vs_cudnn": (t / flops) / (cud / cud_flops)}
            if want is not None:
                row["max_err"] = float(np.abs(np.asarray(f(*sets[0]), np.float32) - want).max())
            print(json.dumps(row), flush=True)
            out["extend"].append(row)
        out["extend"].append({"prefix": prefix, "new": new, "cudnn_us": cud * 1e6})
        del k, v, sets
    for batch, ctx in dec_cases:
        k, v, sets = A.paged_sets(rng, batch, ctx, 1, 4)
        for cfg in [None] + short_cfgs:
            f = jax.jit(functools.partial(A.ragged_paged_attention_pallas, sm_scale=A.SCALE, short_config=cfg))
            t = A.timeit(f, sets)
            row = {"batch": batch, "ctx": ctx, "config": str(cfg or "default"), "us": t * 1e6,
                   "TBps": 2 * batch * ctx * A.KVH * A.D * 2 / t / 1e12}
            print(json.dumps(row), flush=True)
            out["decode"].append(row)
        del k, v, sets
    # page size 1 vs 16 on one decode and one extend case (same default configs)
    f = jax.jit(functools.partial(A.ragged_paged_attention_pallas, sm_scale=A.SCALE))
    for batch, ctx, q_len in ((32, 2048, 1), (1, 2560, 512), (1, 4096, 4096)) if page1 else ():
        for ps in (16, 1):
            k, v, sets = A.paged_sets(rng, batch, ctx, q_len, 4, ps=ps)
            row = {"batch": batch, "ctx": ctx, "q_len": q_len, "page_size": ps, "us": A.timeit(f, sets) * 1e6}
            print(json.dumps(row), flush=True)
            out["page1"].append(row)
            del k, v, sets
    return out


def bench_final(rng, ceil) -> dict:
    """Default configs on the target cases, single-loop variant, page size 1, and JAX's bundled
    dense Pallas `mha` (contiguous KV, no paging): what the Triton lowering reaches unpaged."""
    from jax.experimental.pallas.ops.gpu.attention import BlockSizes, mha
    res = {"decode": A.bench_decode(rng, ceil, [(32, 2048), (32, 8192), (64, 2048), (128, 2048),
                                              (256, 2048), (128, 8192), (1, 32768)], False)}
    L = BlockConfig
    res.update(bench_sweep(rng, [(0, 4096), (8192, 4096), (2048, 4096), (8192, 1024)],
                           [L(64, 32, 1, 4, 2, True, single_loop=True)], [], []))
    res["mha"] = []
    for prefix, new, bq, bk, w, st in ((0, 4096, 128, 64, 4, 2), (0, 4096, 128, 64, 8, 3),
                                       (0, 4096, 128, 128, 8, 2), (8192, 4096, 128, 64, 4, 2),
                                       (8192, 4096, 128, 64, 8, 3)):
        ctx = prefix + new
        q, k, v = (jax.random.normal(jax.random.key(i), (1, n, A.H, A.D), A.DT)
                   for i, n in enumerate((new, ctx, ctx)))
        f = jax.jit(functools.partial(mha, segment_ids=None, sm_scale=A.SCALE, causal=prefix == 0,
                                      block_sizes=BlockSizes(bq, bk), num_warps=w, num_stages=st))
        try:
            t = A.timeit(f, [(q, k, v)])
            fl = 4 * A.H * A.D * (new * (new + 1) / 2 if prefix == 0 else new * ctx)
            row = {"prefix": prefix, "new": new, "block": (bq, bk, w, st), "us": t * 1e6, "TFLOPs": fl / t / 1e12}
        except Exception as e:  # noqa: BLE001
            row = {"prefix": prefix, "new": new, "block": (bq, bk, w, st), "error": str(e)[:200]}
        print(json.dumps(row), flush=True)
        res["mha"].append(row)
    return res


def ncu_once(prefix: int, new: int, cfg: BlockConfig) -> None:
    """Run one extend call (for `ncu --launch-skip 2 --launch-count 1`)."""
    k, v, sets = A.paged_sets(np.random.default_rng(0), 1, prefix + new, new, 1)
    f = jax.jit(functools.partial(A.ragged_paged_attention_pallas, sm_scale=A.SCALE, long_config=cfg))
    for _ in range(3):
        jax.block_until_ready(f(*sets[0]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="attention_sweep.json")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--sweep", action="store_true", help="time alternative configs and page size 1")
    mode.add_argument("--final", action="store_true", help="defaults on target cases, page 1, bundled mha")
    mode.add_argument("--mosaic", action="store_true", help="extend: Mosaic GPU configs vs Triton vs cuDNN")
    mode.add_argument("--ncu", default="", help="PREFIX,NEW,rows,block_k,splits,warps,stages,reverse: one call")
    mode.add_argument("--smoke", action="store_true", help="a tiny sweep in interpret mode on any backend (CI)")
    a = ap.parse_args()
    warnings.filterwarnings("ignore")
    rng = np.random.default_rng(0)
    if a.smoke:
        A.smoke_setup()
        res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "argv": sys.argv}
        res.update(bench_sweep(rng, [(0, 64)], [BlockConfig(32, 16, 1)], [(2, 64)],
                               [BlockConfig(16, 16, 2)], page1=False))
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return
    if jax.default_backend() != "gpu":
        sys.exit("benchmarks/attention_sweep.py needs a GPU (or --smoke)")
    if a.final:
        res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "argv": sys.argv,
               "ceilings": A.ceilings()}
        print(json.dumps(res), flush=True)
        res.update(bench_final(rng, res["ceilings"]))
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return
    if a.mosaic:
        res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "argv": sys.argv}
        triton = BlockConfig(64, 32, 1, 4, 2, reverse=True)  # the Triton long-class default
        cfgs = [triton, MosaicConfig(128, 2), MosaicConfig(64, 4)]
        cases = [(p, n) for p in (0, 512, 2048, 8192) for n in (128, 512, 1024, 4096)]
        res.update(bench_sweep(rng, cases, cfgs, [], [], page1=False, with_default=False))
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return
    if a.ncu:
        p, n, *c = (int(x) for x in a.ncu.split(","))
        return ncu_once(p, n, BlockConfig(*c[:5], *(bool(x) for x in c[5:])))
    if a.sweep:
        L, S = BlockConfig, BlockConfig
        big = [L(64, 32, 1, 4, 2, True), L(64, 32, 1, 4, 3, True), L(128, 32, 1, 8, 3, True),
               L(128, 64, 1, 8, 3, True), L(128, 32, 1, 8, 2, True), L(128, 32, 1, 8, 3, True, True)]
        res = {"device": jax.devices()[0].device_kind, "jax": jax.__version__, "argv": sys.argv}
        res.update(bench_sweep(rng, [(0, 4096), (8192, 4096)], big,
                               [(32, 2048), (32, 8192), (64, 2048), (256, 2048)],
                               [S(16, 64, 1, 4, 3), S(16, 128, 1, 4, 2)]))
        rest = [(p, n) for p in (0, 512, 2048, 8192) for n in (128, 512, 1024, 4096)
                if (p, n) not in ((0, 4096), (8192, 4096))]
        res["extend_all"] = bench_sweep(rng, rest, [big[0], big[2], big[3]], [], [], page1=False)["extend"]
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
        return


if __name__ == "__main__":
    main()
