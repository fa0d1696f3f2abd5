"""A decode step's RoPE, KV write and attention in one kernel launch per layer.

    rope_write_attention_pallas(qkv, inv_freq, k_pages, v_pages, query_start, kv_lens,
                                page_table, slots, ...) -> (out, k_pages, v_pages)

For steps where every sequence has at most one new token (the decode hint). Unfused, a layer runs
three small XLA kernels between its QKV projection and attention: q's RoPE, and the K and V scatters
into the cache (on an H200, ~2 us each at batch 1: 6 us a layer, 4% of an 8B step). Here the
Triton decode kernel (ragged_paged_attention._attn_kernel with fused=True) takes the projection as
it comes out of the GEMM, rotates q and the new K itself, writes the new K/V into the (aliased,
donated) cache, and attends to the cached positions plus the new token from registers, so it never
reads a slot another program may be writing.

Opt-in, $JAXSGL_FUSED_DECODE=1 (part of the executable cache's key): on the H200 (session 20,
docs/perf.md) it removed 3 launches a layer but the kernel took ~6 us a layer more than the plain decode
kernel (batch 1: 584 vs 383 us a step; batch 256: the step 9% slower), so it is not the default.
The model uses it only where it applies (`fused_decode_applies`): a Pallas impl, the decode hint,
no per-head q/k norm. The reference path (apply_rope + write_kv + attention) is the test oracle
(tests/kernels/test_fused_decode.py).
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp

from jaxsgl.kernels.block_configs import BlockConfig, default_configs
from jaxsgl.kernels.ragged_paged_attention import _launch
from jaxsgl.kernels.tile_plans import class_plan, combine_splits, tile_bound

_SETTING = os.environ.get("JAXSGL_FUSED_DECODE", "0")
if _SETTING not in ("0", "1"):
    raise ValueError(f"JAXSGL_FUSED_DECODE={_SETTING!r}: expected '0' or '1'")
FUSED_DECODE = _SETTING == "1"


@functools.partial(jax.jit, static_argnames=("sm_scale", "soft_cap", "sliding_window", "config", "interpret"),
                   donate_argnames=("k_pages", "v_pages"))
def rope_write_attention_pallas(
    qkv: jax.Array, inv_freq: jax.Array, k_pages: jax.Array, v_pages: jax.Array, query_start: jax.Array,
    kv_lens: jax.Array, page_table: jax.Array, slots: jax.Array, *, sm_scale: float,
    soft_cap: float | None = None, sliding_window: int | None = None, config: BlockConfig | None = None,
    interpret: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Decode attention with the RoPE of q / K and the KV write fused in (see the module docstring).

    qkv [T, H + 2 KVH, D]: each token's q heads, then its K and V heads, before RoPE; inv_freq
    [D / 2] f32: RoPE's per-pair frequencies (rotate-half convention); slots int32[T]: where each
    token's K/V go (negative: dropped). Every sequence must have at most one new token, at position
    kv_lens[s] - 1. Returns (out [T, H, D], k_pages, v_pages) with the new K/V written; k_pages and
    v_pages are donated. Rows of padding tokens may be left unwritten (as under the decode hint).
    """
    T, heads, D = qkv.shape
    N, page_size, KVH, Dk = k_pages.shape
    H = heads - 2 * KVH
    S, P = page_table.shape
    if Dk != D or D % 2 or H <= 0 or H % KVH or k_pages.shape != v_pages.shape:
        raise ValueError(f"qkv {qkv.shape} does not match KV pages {k_pages.shape} / {v_pages.shape}: "
                         "expected [T, num_heads + 2 * num_kv_heads, head_dim] with an even head_dim")
    if inv_freq.shape != (D // 2,) or slots.shape != (T,):
        raise ValueError(f"inv_freq {inv_freq.shape} / slots {slots.shape}: expected ({D // 2},) / ({T},)")
    if k_pages.dtype != qkv.dtype:
        raise ValueError(f"KV dtype {k_pages.dtype} differs from qkv dtype {qkv.dtype}")
    cfg = config or default_configs(T, S, P, page_size, H, KVH, D, qkv.dtype)[0]
    group = H // KVH
    tile = cfg.rows // group
    if tile < 1:
        raise ValueError(f"config {cfg}: rows must be >= heads per KV head ({group})")
    query_start, kv_lens = query_start.astype(jnp.int32), kv_lens.astype(jnp.int32)
    # The decode class's plan, as the unfused kernel's under the decode hint: one tile per sequence.
    plan = class_plan(query_start, kv_lens, T, tile, 1, tile, tile_bound(T, S, tile, 1, tile))
    inv = jnp.concatenate([inv_freq, inv_freq]).astype(jnp.float32)  # lane d and d + D/2 share a frequency
    res = _launch(plan, qkv, k_pages.reshape(N * page_size, KVH, D), v_pages.reshape(N * page_size, KVH, D),
                  page_table.astype(jnp.int32), None, cfg, page_size=page_size, sm_scale=sm_scale,
                  soft_cap=soft_cap, window=sliding_window, interpret=interpret,
                  fused=(inv, slots.astype(jnp.int32)))
    *outs, k_flat, v_flat = res
    if cfg.num_splits == 1:
        return outs[0], k_flat.reshape(k_pages.shape), v_flat.reshape(v_pages.shape)
    out = combine_splits(outs[0], outs[1], plan, None, T, group, qkv.dtype, tile_tokens=1)
    return out, k_flat.reshape(k_pages.shape), v_flat.reshape(v_pages.shape)
