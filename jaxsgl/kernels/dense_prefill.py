"""Dense attention for a step that is one fresh prefill (no cached prefix): cuDNN's fused kernel.

On the H100 cuDNN ran a long causal prefill 2.2-2.9x faster than our first (Triton) paged kernel,
which is why the "pallas_cudnn" impl exists. On Hopper the Mosaic GPU kernel is now within 1.06x
of cuDNN, and a whole 8B prefill step is as fast or faster without this path (its K/V gather and
per-layer cond cost more: docs/perf.md, session 4), so "auto" uses it only on other NVIDIA GPUs.
`with_dense_prefill` wraps a paged implementation in a
runtime `lax.cond`: when the step's only real sequence has kv_len == q_len (nothing cached),
its K/V are read back from their pages as one contiguous [T, KVH, D] block and attended to
densely; every other step takes the paged path. Both branches are compiled.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

DENSE_PREFILL_MIN_TOKENS = 1024  # below this the Pallas kernel is as fast (docs/perf.md)


def dense_prefill_attention(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, query_start: jax.Array,
                            kv_lens: jax.Array, page_table: jax.Array, *, sm_scale: float,
                            implementation: str | None = "cudnn") -> jax.Array:
    """Causal attention of sequence 0's new tokens over themselves (assumes no cached prefix).

    q: [T, H, D]; pages [num_pages, page_size, KVH, D]; rows past sequence 0's q_len are zeros.
    """
    T = q.shape[0]
    page_size = k_pages.shape[1]
    P = page_table.shape[1]
    pages = page_table[0]

    def contiguous(pages_arr):  # [T, KVH, D]; slots past kv_len zeroed (0 * garbage could be NaN)
        x = pages_arr[pages].reshape(P * page_size, *pages_arr.shape[2:])
        x = jnp.pad(x, [(0, max(T - P * page_size, 0)), (0, 0), (0, 0)])[:T]
        return jnp.where((jnp.arange(T) < kv_lens[0])[:, None, None], x, 0)

    k, v = contiguous(k_pages), contiguous(v_pages)
    out = jax.nn.dot_product_attention(q[None], k[None].astype(q.dtype), v[None].astype(q.dtype),
                                       scale=sm_scale, is_causal=True, implementation=implementation)[0]
    n = query_start[1] - query_start[0]
    return jnp.where((jnp.arange(T) < n)[:, None, None], out, 0).astype(q.dtype)


def is_single_fresh_prefill(query_start: jax.Array, kv_lens: jax.Array) -> jax.Array:
    """True (traced) when sequence 0 is the only one with new tokens and it has no cached prefix."""
    q_len = query_start[1:] - query_start[:-1]
    return (jnp.sum(q_len > 0) == 1) & (q_len[0] > 0) & (q_len[0] == kv_lens[0])


def with_dense_prefill(paged: Callable, implementation: str | None = "cudnn") -> Callable:
    """An attention function that takes the dense path for single fresh prefills, `paged` otherwise.

    Falls through to `paged` statically (no cond) when the dense path does not apply to the
    step's static settings: fewer than DENSE_PREFILL_MIN_TOKENS padded tokens, soft cap,
    sliding window, or a dtype cuDNN does not take (fp32).
    """
    def attention(q, k_pages, v_pages, query_start, kv_lens, page_table, *, sm_scale, soft_cap=None,
                  sliding_window=None):
        args = (q, k_pages, v_pages, query_start, kv_lens, page_table)
        kw = dict(sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window)
        dense_ok = (q.shape[0] >= DENSE_PREFILL_MIN_TOKENS and soft_cap is None and sliding_window is None
                    and (implementation != "cudnn" or q.dtype in (jnp.bfloat16, jnp.float16)))
        if not dense_ok:
            return paged(*args, **kw)
        return jax.lax.cond(is_single_fresh_prefill(query_start, kv_lens),
                            lambda a: dense_prefill_attention(*a, sm_scale=sm_scale, implementation=implementation),
                            lambda a: paged(*a, **kw), args)

    return attention
