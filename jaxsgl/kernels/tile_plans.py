"""Tile plans of the Triton kernel's sequence classes, and the merge of split partials.

A class is the sequences with q_min <= q_len <= q_max new tokens; a plan is one int32 row
(seq, first row, num rows, first position) per tile of up to `tile_tokens` of a sequence's new
tokens, in a grid whose size is a static bound (`tile_bound`). Built on the device from
query_start / kv_lens (a few small XLA fusions per class).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def cdiv(a, b):
    return (a + b - 1) // b


def class_plan(query_start: jax.Array, kv_lens: jax.Array, num_tokens: int, tile_tokens: int,
               q_min: int, q_max: int, num_tiles: int) -> jax.Array:
    """int32[num_tiles, 4] rows (seq, first row, num rows, first position) for one class.

    Sequences with q_min <= q_len <= q_max belong to the class. Index S is a pseudo-
    sequence holding the padding tokens past query_start[-1] (kv_len 0: outputs zeros).
    Tiles past the class's count are idle (num rows 0).
    """
    qs = jnp.concatenate([query_start, jnp.full((1,), num_tokens, jnp.int32)])
    q_len = qs[1:] - qs[:-1]
    kvl = jnp.concatenate([kv_lens, jnp.zeros((1,), jnp.int32)])
    in_cls = (q_len >= q_min) & (q_len <= q_max)
    if q_max <= tile_tokens and num_tiles == q_len.shape[0]:  # one tile per sequence: no search
        nrows = jnp.where(in_cls, q_len, 0)
        return jnp.stack([jnp.arange(num_tiles, dtype=jnp.int32), jnp.where(in_cls, qs[:-1], 0),
                          nrows, jnp.where(in_cls, kvl - q_len, 0)], axis=1).astype(jnp.int32)
    n = jnp.where(in_cls, cdiv(q_len, tile_tokens), 0)
    end = jnp.cumsum(n)
    i = jnp.arange(num_tiles, dtype=jnp.int32)
    live = i < end[-1]
    seq = jnp.minimum(jnp.searchsorted(end, i, side="right", method="compare_all"), q_len.shape[0] - 1).astype(jnp.int32)
    row0 = qs[seq] + (i - (end[seq] - n[seq])) * tile_tokens
    nrows = jnp.where(live, jnp.minimum(tile_tokens, qs[seq + 1] - row0), 0)
    pos0 = jnp.where(live, kvl[seq] - q_len[seq] + (row0 - qs[seq]), 0)
    return jnp.stack([seq, jnp.where(live, row0, 0), nrows, pos0], axis=1).astype(jnp.int32)


def tile_bound(num_tokens: int, num_seqs: int, tile_tokens: int, q_min: int, q_max: int) -> int:
    """Static bound on the tiles of the sequences with q_min <= q_len <= q_max (the padding
    pseudo-sequence included): the class's launch grid."""
    if q_max <= tile_tokens:
        return num_seqs + 1  # one tile per sequence
    seqs = min(num_seqs + 1, num_tokens // q_min)
    # at most one partial tile per sequence beyond T // tile, and at most cdiv(q_max, tile)
    # per sequence (the tighter bound when the Mosaic class takes the long sequences)
    return max(1, min(seqs + num_tokens // tile_tokens, seqs * cdiv(min(q_max, num_tokens), tile_tokens)))


def combine_splits(o_parts: jax.Array, lse: jax.Array, plan: jax.Array, out: jax.Array | None,
                   num_tokens: int, group: int, dtype, tile_tokens: int | None = None) -> jax.Array:
    """Merge split partials o_parts [splits, tiles, KVH, rows, D] by their log2-sum-exp
    lse [splits, tiles, KVH, rows] and scatter each tile's rows to its tokens in `out`
    [T, H, D] (a fresh zero buffer when None). Returns the updated buffer.
    tile_tokens: no tile holds more tokens than this (a decode class: 1), so only the rows of
    that many tokens are read (rows past a tile's tokens are never written)."""
    if tile_tokens is not None and tile_tokens * group < o_parts.shape[3]:
        o_parts, lse = o_parts[:, :, :, :tile_tokens * group], lse[:, :, :, :tile_tokens * group]
    m = jnp.max(lse, axis=0)
    w = jnp.exp2(lse - jnp.where(jnp.isfinite(m), m, 0.0))
    w = jnp.where(jnp.isfinite(lse), w, 0.0)
    den, num = jnp.sum(w, axis=0), jnp.sum(w[..., None] * o_parts, axis=0)
    merged = num / jnp.where(den == 0.0, 1.0, den)[..., None]
    tiles, KVH, rows, D = merged.shape
    tile_tokens = rows // group  # a tile row is (token, head within the group); rows past
    merged = merged[:, :, :tile_tokens * group]  # tile_tokens * group pad a group that does not divide them
    merged = merged.reshape(tiles, KVH, tile_tokens, group, D).transpose(0, 2, 1, 3, 4)
    r = jnp.arange(tile_tokens, dtype=jnp.int32)[None, :]
    spare = num_tokens + jnp.arange(tiles * tile_tokens, dtype=jnp.int32).reshape(tiles, tile_tokens)
    tok = jnp.where(r < plan[:, 2:3], plan[:, 1:2] + r, spare).reshape(-1)  # idle rows: dropped
    if out is None:
        out = jnp.zeros((num_tokens, KVH * group, D), dtype)
    return out.at[tok].set(merged.reshape(tiles * tile_tokens, KVH * group, D).astype(dtype),
                           mode="drop", unique_indices=True)


def token_in_class(query_start: jax.Array, num_tokens: int, q_min: int, q_max: int) -> jax.Array:
    """bool[T]: whether each token's sequence has q_min <= q_len <= q_max new tokens."""
    qs = jnp.concatenate([query_start, jnp.full((1,), num_tokens, jnp.int32)])
    q_len = qs[1:] - qs[:-1]
    t = jnp.arange(num_tokens, dtype=jnp.int32)
    seq = jnp.searchsorted(qs, t, side="right", method="compare_all") - 1
    return (q_len[seq] >= q_min) & (q_len[seq] <= q_max)
