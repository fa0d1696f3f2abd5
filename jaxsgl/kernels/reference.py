"""Plain-jnp references for the paged-attention ops: the CPU path and the test oracle.

KV layout (one array per layer, K and V separate):
    k_pages, v_pages: [num_pages, page_size, num_kv_heads, head_dim]
A flat slot s lives at page s // page_size, offset s % page_size.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

# Tokens processed together by the reference; bounds its gathered-KV temporary
# to TOKEN_BLOCK * max_kv_len * num_kv_heads * head_dim elements.
TOKEN_BLOCK = 32


def write_kv_ref(k_pages: jax.Array, v_pages: jax.Array, k: jax.Array, v: jax.Array,
                 slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Scatter new K/V rows [T, KVH, D] into their flat slots; negative slots are dropped.

    Returns the updated (k_pages, v_pages); callers donate the inputs so XLA updates in place.
    """
    num_pages, page_size = k_pages.shape[:2]
    n = num_pages * page_size
    idx = jnp.where(slots < 0, n, slots)  # out of range -> dropped
    flat_k = k_pages.reshape(n, *k_pages.shape[2:]).at[idx].set(k.astype(k_pages.dtype), mode="drop")
    flat_v = v_pages.reshape(n, *v_pages.shape[2:]).at[idx].set(v.astype(v_pages.dtype), mode="drop")
    return flat_k.reshape(k_pages.shape), flat_v.reshape(v_pages.shape)


def ragged_paged_attention_ref(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    query_start: jax.Array,
    kv_lens: jax.Array,
    page_table: jax.Array,
    *,
    sm_scale: float,
    soft_cap: float | None = None,
    sliding_window: int | None = None,
    kv_block: int | None = None,
) -> jax.Array:
    """Causal attention of a packed ragged batch over paged KV.

    q:           [T, H, D]  new-token queries, sequence s owns rows query_start[s]:query_start[s+1]
    k/v_pages:   [num_pages, page_size, KVH, D], H % KVH == 0 (grouped-query attention)
    query_start: int32[S+1]; kv_lens: int32[S] (KV length including the new tokens)
    page_table:  int32[S, P]
    Token i of sequence s is at position kv_lens[s] - q_len_s + i and sees KV positions
    j <= its position (and j > position - sliding_window when a window is set).
    Returns [T, H, D] in q's dtype; rows of padding tokens are zeros.
    kv_block (static; a multiple of page_size): a row's softmax and its weighted sum of V in blocks of
    this many KV positions, first to last (online softmax), so a row's sums are the same whatever the
    page table's width P (the blocks past a row's KV change nothing); by default one softmax over all
    P * page_size positions, whose summation order follows P.
    """
    T, H, D = q.shape
    _, page_size, KVH, _ = k_pages.shape
    if H % KVH:
        raise ValueError(f"num_heads {H} is not a multiple of num_kv_heads {KVH}")
    S, P = page_table.shape
    L = P * page_size
    group = H // KVH

    tok = jnp.arange(T, dtype=jnp.int32)
    seq = jnp.clip(jnp.searchsorted(query_start, tok, side="right", method="compare_all") - 1, 0, S - 1).astype(jnp.int32)
    valid = tok < query_start[-1]
    q_len = query_start[1:] - query_start[:-1]
    pos = kv_lens[seq] - q_len[seq] + (tok - query_start[seq])  # [T]

    chunk = L if kv_block is None else kv_block
    if chunk % page_size:
        raise ValueError(f"kv_block {kv_block} is not a multiple of page_size {page_size}")
    num_chunks = -(-L // chunk)
    table = jnp.pad(page_table, [(0, 0), (0, num_chunks * chunk // page_size - P)])  # pad page 0: masked

    def scores(qg, seqb, posb, validb, c):
        """Scores [B, KVH, G, chunk] of KV chunk c (masked: -inf) and its values [B, chunk, KVH, D]."""
        kv_idx = c * chunk + jnp.arange(chunk, dtype=jnp.int32)
        pages = jax.lax.dynamic_slice_in_dim(table[seqb], c * (chunk // page_size), chunk // page_size, axis=1)
        # Slots past kv_len may hold anything (stale or never-written pages): zero them so
        # that a masked score times a NaN value cannot poison the row.
        live = (kv_idx[None, :] < kv_lens[seqb][:, None])[:, :, None, None]
        kb = jnp.where(live, k_pages[pages].reshape(TOKEN_BLOCK, chunk, KVH, D).astype(jnp.float32), 0.0)
        vb = jnp.where(live, v_pages[pages].reshape(TOKEN_BLOCK, chunk, KVH, D).astype(jnp.float32), 0.0)
        # HIGHEST: XLA's default float32 matmul on GPU is TF32 (~3e-4 relative error).
        s = jnp.einsum("bkgd,blkd->bkgl", qg, kb, precision=jax.lax.Precision.HIGHEST) * sm_scale
        if soft_cap is not None:
            s = soft_cap * jnp.tanh(s / soft_cap)
        mask = (kv_idx[None, :] <= posb[:, None]) & (kv_idx[None, :] < kv_lens[seqb][:, None])
        if sliding_window is not None:
            mask &= kv_idx[None, :] > posb[:, None] - sliding_window
        mask &= validb[:, None]
        return jnp.where(mask[:, None, None, :], s, -jnp.inf), vb

    def fold(carry, s, vb):
        """Online softmax: add a chunk's scores and values to (running max, sum, weighted values). A chunk
        with every score masked changes nothing, bit for bit (its weights are 0, the rescale exactly 1)."""
        m, l, acc = carry
        m_new = jnp.maximum(m, jnp.max(s, axis=-1, keepdims=True))
        m_use = jnp.where(jnp.isfinite(m_new), m_new, 0.0)
        alpha, p = jnp.exp(m - m_use), jnp.exp(s - m_use)
        pv = jnp.einsum("bkgl,blkd->bkgd", p, vb, precision=jax.lax.Precision.HIGHEST)
        return m_new, l * alpha + jnp.sum(p, axis=-1, keepdims=True), acc * alpha + pv

    def one_block(args):
        qb, seqb, posb, validb = args  # [B,H,D], [B], [B], [B]
        qg = qb.astype(jnp.float32).reshape(TOKEN_BLOCK, KVH, group, D)
        shape = (TOKEN_BLOCK, KVH, group, 1)
        carry = (jnp.full(shape, -jnp.inf), jnp.zeros(shape), jnp.zeros((TOKEN_BLOCK, KVH, group, D)))
        _, l, acc = jax.lax.fori_loop(0, num_chunks, lambda c, cr: fold(cr, *scores(qg, seqb, posb, validb, c)),
                                      carry)
        return (acc / jnp.where(l == 0, 1.0, l)).reshape(TOKEN_BLOCK, H, D)

    pad = (-T) % TOKEN_BLOCK
    blocks = lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(-1, TOKEN_BLOCK, *x.shape[1:])
    xs = (blocks(q), blocks(seq), blocks(pos), blocks(valid))
    # The output buffer depends on this layer's K pages (lax.map's starts as constants, which XLA creates
    # for every layer at the start of the step: model/forward.py's row_blocks). Not on q: a second reader
    # of q changes how XLA fuses the ops that make q, and a row's last bits with them, differently in
    # different batches. NaN pages make a NaN buffer, which the loop overwrites whole.
    out = jnp.full(xs[0].shape, k_pages.reshape(-1)[0].astype(jnp.float32) * 0)

    def body(out, x):
        i, *block = x
        return jax.lax.dynamic_update_index_in_dim(out, one_block(block), i, 0), None

    out, _ = jax.lax.scan(body, out, (jnp.arange(xs[0].shape[0], dtype=jnp.int32),) + xs)
    return out.reshape(-1, H, D)[:T].astype(q.dtype)
