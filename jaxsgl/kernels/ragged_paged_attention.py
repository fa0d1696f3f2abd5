"""Ragged paged attention as a Pallas kernel (Triton lowering on NVIDIA GPUs).

One launch handles a packed ragged batch of any mix of decode and extend/prefill
sequences. Work is cut into *tiles*: a tile is up to `rows // group` consecutive
new tokens of one sequence, and a program handles one (tile, kv_head, kv_split).
The tile's query rows are (token, q_head) pairs, so the `group` query heads that
share a KV head form one matrix and the KV is read once for all of them:

    q rows of a tile (group 4):  t0h0 t0h1 t0h2 t0h3 t1h0 ... t3h3        (rows = 16)
    KV of its sequence:          | block_k | block_k | ... | up to the tile's last position

KV rows are gathered token by token through the page table, so any page size works.
Blocks wholly below the causal diagonal run without masks; the rest mask per row.
Sequences fall into two classes, each launched with its own static block shape:
short (q_len <= rows // group of the short config: decode) and long (extend, prefill).
The long class runs either this kernel (a BlockConfig) or the Mosaic GPU kernel of
paged_extend_mosaic.py (a MosaicConfig). By default on Hopper, where it applies, sequences
of >= MOSAIC_MIN_Q new tokens go to the Mosaic kernel and shorter extends stay here.
With num_splits > 1 (flash-decoding) each split writes a partial output and its
log-sum-exp, merged in plain jnp afterwards.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from jaxsgl.kernels.block_configs import BlockConfig, default_configs, next_pow2
from jaxsgl.kernels.paged_extend_mosaic import (MOSAIC_MIN_Q, TILE_TOKENS, MosaicConfig,
                                                check_supported, on_hopper, paged_extend_mosaic, plan_tiles)
from jaxsgl.kernels.tile_plans import cdiv, class_plan, combine_splits, tile_bound, token_in_class

MASK = -1e30  # finite, so a row that sees no key in a block stays NaN-free
LOG2E = math.log2(math.e)


def _attn_kernel(plan_ref, q_ref, k_ref, v_ref, pt_ref, *refs, sm_scale: float,
                 soft_cap: float | None, window: int | None, group: int, rows: int,
                 block_k: int, num_splits: int, page_size: int, head_dim: int,
                 aliased: bool, reverse: bool, overlap: bool, single_loop: bool, fused: bool = False):
    """One (tile, kv_head, split). plan_ref[tile] = (seq, first row, num rows, first position).

    q_ref [T, H, D]; k_ref/v_ref [num_slots, KVH, D]; pt_ref [S, P]; outputs: o [T, H, D]
    (num_splits == 1) or o [splits, tiles, KVH, rows, D] f32 and lse [splits, tiles, KVH, rows]
    (log2 domain), merged by `tile_plans.combine_splits`.
    reverse: take tiles last-first (a sequence's last tiles see the most KV: start them first).
    overlap: issue the next block's q.k^T before this block's softmax (unmasked blocks).
    fused (decode tiles of one new token, fused_decode.py): q_ref is the QKV projection
    [T, H + 2 KVH, D] before RoPE, followed by inv_ref [D] (RoPE frequencies, tiled twice) and
    slot_ref [T]; the kernel rotates q and the new K, writes the new K/V into k_out/v_out (the
    last two outputs, aliased to k_ref/v_ref) and attends to the new token from registers.
    """
    if fused:
        inv_ref, slot_ref, k_out_ref, v_out_ref = refs[0], refs[1], refs[-2], refs[-1]
        refs = refs[2:-2]
    refs = refs[1:] if aliased else refs  # an aliased previous output shares o_ref's buffer
    o_ref, lse_ref = (refs[0], refs[1] if num_splits > 1 else None)
    tile = pl.program_id(0)
    if reverse:
        tile = pl.num_programs(0) - 1 - tile
    h, split = pl.program_id(1), pl.program_id(2)
    seq, row0 = plan_ref[tile, 0], plan_ref[tile, 1]
    nrows, pos0 = plan_ref[tile, 2], plan_ref[tile, 3]
    num_tokens = q_ref.shape[0]
    pt_row = jnp.minimum(seq, pt_ref.shape[0] - 1)  # the padding pseudo-sequence reads no KV

    r = jnp.arange(rows, dtype=jnp.int32)
    tok_off = r // group
    row_ok = tok_off < nrows
    tok = jnp.where(row_ok, row0 + tok_off, num_tokens)[:, None]  # masked rows point past the end
    head = (h * group + r % group)[:, None]
    d_pad = next_pow2(head_dim)
    d = jnp.arange(d_pad, dtype=jnp.int32)[None, :]
    d_ok = d < head_dim if d_pad != head_dim else None
    qmask = row_ok[:, None] if d_ok is None else row_ok[:, None] & d_ok
    pos = pos0 + tok_off  # absolute position of each row
    hi = jnp.maximum(pos0 + nrows, 0)  # last row's position + 1
    lo = jnp.int32(0) if window is None else jnp.clip(pos0 - window + 1, 0, hi)
    nblocks = cdiv(hi - lo, block_k)
    per_split = cdiv(nblocks, num_splits)
    b0 = jnp.minimum(split * per_split, nblocks)
    b1 = jnp.minimum(b0 + per_split, nblocks)
    if fused:  # the new token (position pos0) comes from registers: the cache is read below it
        new = _fused_new_token(q_ref, inv_ref, slot_ref, k_out_ref, v_out_ref, tok=tok, head=head, qmask=qmask,
                               pos=pos, pos0=pos0, row0=row0, h=h, group=group, head_dim=head_dim, d_pad=d_pad,
                               write=(nrows > 0) & (nblocks > 0) & (split == (nblocks - 1) // jnp.maximum(per_split, 1)))
        q, hi_kv = new[0], hi - 1
    else:
        q, hi_kv = plgpu.load(q_ref.at[tok, head, d], mask=qmask, other=0), hi
    if window is None:  # blocks ending at or before the first row's position (fused: before it) need no mask
        nfull = jnp.clip((pos0 + (0 if fused else 1) - lo) // block_k, b0, b1)
    else:
        nfull = b0
    # Scores go to the log2 domain as s * c - m (one FMA); with a soft cap c = 1.
    c = 1.0 if soft_cap is not None else sm_scale * LOG2E
    # Triton's default for a float32 dot is TF32 (~3e-4 relative error): ask for IEEE.
    prec = lax.Precision.HIGHEST if q_ref.dtype == jnp.float32 else None
    pow2 = page_size & (page_size - 1) == 0
    shift = page_size.bit_length() - 1

    def load_kv(b, masked: bool):
        j = lo + b * block_k + jnp.arange(block_k, dtype=jnp.int32)
        pidx, poff = (j >> shift, j & (page_size - 1)) if pow2 else (j // page_size, j % page_size)
        if masked:
            jm = j < hi_kv
            page = plgpu.load(pt_ref.at[pt_row, pidx], mask=jm, other=0)
        else:
            page = pt_ref[pt_row, pidx]
        slot = (page * page_size + poff)[:, None]
        kv_mask = None
        if masked:
            kv_mask = jm[:, None] if d_ok is None else jm[:, None] & d_ok
        elif d_ok is not None:
            kv_mask = d_ok
        other = None if kv_mask is None else 0
        k = plgpu.load(k_ref.at[slot, h, d], mask=kv_mask, other=other)
        v = plgpu.load(v_ref.at[slot, h, d], mask=kv_mask, other=other)
        return j, k, v

    def capped(s):
        return s if soft_cap is None else (soft_cap * LOG2E) * jnp.tanh(s * (sm_scale / soft_cap))

    def scores(k):
        return capped(lax.dot_general(q, k, (((1,), (1,)), ((), ())), precision=prec,
                                      preferred_element_type=jnp.float32))

    def update(s, v, carry):
        acc, m, l = carry
        m_new = jnp.maximum(m, jnp.max(s, axis=1) * c)
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s * c - m_new[:, None])
        l = l * alpha + jnp.sum(p, axis=1)
        acc = acc * alpha[:, None]
        pv = lax.dot_general(p.astype(v.dtype), v, (((1,), (0,)), ((), ())), precision=prec,
                             preferred_element_type=jnp.float32)
        return acc + pv, m_new, l

    def body(b, carry, masked: bool):
        j, k, v = load_kv(b, masked)
        s = scores(k)
        if masked:
            ok = (j[None, :] < pos[:, None]) if fused else (j[None, :] <= pos[:, None])
            if window is not None:
                ok &= j[None, :] > pos[:, None] - window
            s = jnp.where(ok, s, MASK)
        return update(s, v, carry)

    carry = (jnp.zeros((rows, d_pad), jnp.float32), jnp.full((rows,), MASK, jnp.float32),
             jnp.zeros((rows,), jnp.float32))
    if single_loop:
        nfull = b0
    if overlap:  # software-pipelined: q.k^T of block b + 1 is in flight during block b's softmax
        def obody(b, c2):
            acc, m, l, s = c2
            _, k_next, _ = load_kv(jnp.minimum(b + 1, nfull - 1), False)
            s_next = scores(k_next)
            _, _, v = load_kv(b, False)
            return update(s, v, (acc, m, l)) + (s_next,)
        _, k0, _ = load_kv(b0, True)  # masked: the loop may be empty
        acc, m, l, _ = lax.fori_loop(b0, nfull, obody, carry + (scores(k0),))
        carry = (acc, m, l)
    else:
        carry = lax.fori_loop(b0, nfull, lambda b, c2: body(b, c2, False), carry)
    acc, m, l = lax.fori_loop(nfull, b1, lambda b, c2: body(b, c2, True), carry)
    if fused:  # the new token's key and value, in the split that holds the last block
        _, k_new, v_new, attend = new
        s_new = capped(jnp.sum(q.astype(jnp.float32) * k_new.astype(jnp.float32)[None, :], axis=1))
        m_new = jnp.maximum(m, s_new * c)
        alpha = jnp.exp2(m - m_new)
        p = jnp.exp2(s_new * c - m_new)
        pv = p.astype(k_new.dtype).astype(jnp.float32)[:, None] * v_new.astype(jnp.float32)[None, :]
        acc = jnp.where(attend, acc * alpha[:, None] + pv, acc)
        m, l = jnp.where(attend, m_new, m), jnp.where(attend, l * alpha + p, l)
    out = acc / jnp.where(l == 0.0, 1.0, l)[:, None]
    if num_splits == 1:
        plgpu.store(o_ref.at[tok, head, d], out.astype(o_ref.dtype), mask=qmask)
    else:  # partials by (split, tile, kv head, row): sized by the class's tiles, not by T; the rows
        # of the tile's tokens only (a decode tile holds one token: `group` of `rows`)
        plgpu.store(o_ref.at[split, tile, h, r[:, None], d], out, mask=qmask)
        lse = jnp.where(l > 0.0, m + jnp.log2(jnp.where(l > 0.0, l, 1.0)), -jnp.inf)
        plgpu.store(lse_ref.at[split, tile, h, r], lse, mask=row_ok)


def _fused_new_token(qkv_ref, inv_ref, slot_ref, k_out_ref, v_out_ref, *, tok, head, qmask, pos, pos0, row0,
                     h, group: int, head_dim: int, d_pad: int, write):
    """The fused decode kernel's prologue (one new token per tile, at row0, position pos0): RoPE on
    the tile's q rows [rows, D] and on the token's K head h (the model's rotate-half, as
    `forward.apply_rope`), and, where `write` (this program holds the token's last KV block), the
    new K/V stored at the token's slot. Returns (q, k_new [D], v_new [D], write)."""
    kv_heads = qkv_ref.shape[1] // (group + 2)  # qkv heads: group * KVH of q, then KVH of k, KVH of v
    kh, vh = group * kv_heads + h, (group + 1) * kv_heads + h
    half = head_dim // 2
    d1 = jnp.arange(d_pad, dtype=jnp.int32)
    d_ok1 = d1 < head_dim
    swapped = jnp.where(d1 < half, d1 + half, d1 - half)  # each lane's rotate-half partner
    sign = jnp.where(d1 < half, -1.0, 1.0).astype(jnp.float32)
    inv = plgpu.load(inv_ref.at[d1], mask=d_ok1, other=0.0)

    def rope(x, x_swapped, ang):
        return x.astype(jnp.float32) * jnp.cos(ang) + sign * x_swapped.astype(jnp.float32) * jnp.sin(ang)

    q = rope(plgpu.load(qkv_ref.at[tok, head, d1[None, :]], mask=qmask, other=0),
             plgpu.load(qkv_ref.at[tok, head, swapped[None, :]], mask=qmask, other=0),
             pos.astype(jnp.float32)[:, None] * inv[None, :]).astype(qkv_ref.dtype)
    k_new = rope(plgpu.load(qkv_ref.at[row0, kh, d1], mask=d_ok1, other=0),
                 plgpu.load(qkv_ref.at[row0, kh, swapped], mask=d_ok1, other=0),
                 pos0.astype(jnp.float32) * inv).astype(qkv_ref.dtype)
    v_new = plgpu.load(qkv_ref.at[row0, vh, d1], mask=d_ok1, other=0)
    slot = slot_ref[row0]
    store = d_ok1 & write & (slot >= 0)
    plgpu.store(k_out_ref.at[jnp.maximum(slot, 0), h, d1], k_new, mask=store)
    plgpu.store(v_out_ref.at[jnp.maximum(slot, 0), h, d1], v_new, mask=store)
    return q, k_new, v_new, write


def _launch(plan, q, k_flat, v_flat, page_table, prev_out, cfg: BlockConfig, *, page_size: int,
            sm_scale: float, soft_cap: float | None, window: int | None, interpret: bool,
            fused: tuple | None = None):
    """One pallas_call over the plan's tiles. Returns o (splits == 1) or (o_parts, lse).
    fused = (inv_freq [D], slots [T]): q is the QKV projection [T, H + 2 KVH, D] of decode tokens
    (fused_decode.py); the updated k_flat and v_flat are returned after the output(s)."""
    T, H, D = q.shape
    KVH = k_flat.shape[1]
    H = H - 2 * KVH if fused else H
    group = H // KVH
    aliased = prev_out is not None and cfg.num_splits == 1
    kernel = _partial(_attn_kernel, sm_scale=sm_scale, soft_cap=soft_cap, window=window,
                      group=group, rows=cfg.rows, block_k=cfg.block_k, num_splits=cfg.num_splits,
                      page_size=page_size, head_dim=D, aliased=aliased,
                      reverse=cfg.reverse, overlap=cfg.overlap, single_loop=cfg.single_loop,
                      fused=bool(fused))
    if cfg.num_splits == 1:
        out_shape = (jax.ShapeDtypeStruct((T, H, D), q.dtype),)
    else:
        parts = (cfg.num_splits, plan.shape[0], KVH, cfg.rows)
        out_shape = (jax.ShapeDtypeStruct(parts + (D,), jnp.float32),
                     jax.ShapeDtypeStruct(parts, jnp.float32))
    args = (plan, q, k_flat, v_flat, page_table) + (tuple(fused) if fused else ()) + ((prev_out,) if aliased else ())
    aliases = {5: 0} if aliased else {}
    if fused:
        if aliased:
            raise ValueError("the fused decode kernel writes a fresh output")
        aliases = {2: len(out_shape), 3: len(out_shape) + 1}
        out_shape += (jax.ShapeDtypeStruct(k_flat.shape, k_flat.dtype), jax.ShapeDtypeStruct(v_flat.shape, v_flat.dtype))
    res = pl.pallas_call(
        kernel,
        grid=(plan.shape[0], KVH, cfg.num_splits),
        out_shape=out_shape,
        input_output_aliases=aliases,
        compiler_params=plgpu.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
        interpret=interpret,
        name=f"ragged_paged_attention{'_fused' if fused else ''}_r{cfg.rows}_k{cfg.block_k}_s{cfg.num_splits}",
    )(*args)
    return res if fused else (res[0] if cfg.num_splits == 1 else res)


def _partial(fn, **kw):
    def bound(*refs):
        return fn(*refs, **kw)
    return bound


_STATIC = ("sm_scale", "soft_cap", "sliding_window", "short_config", "long_config", "interpret",
           "min_q_len", "max_q_len", "use_mosaic", "batch_invariant")
_DONATE = ("out_init",)


@functools.partial(jax.jit, static_argnames=_STATIC, donate_argnames=_DONATE)
def ragged_paged_attention_pallas(
    q: jax.Array, k_pages: jax.Array, v_pages: jax.Array, query_start: jax.Array,
    kv_lens: jax.Array, page_table: jax.Array, *, sm_scale: float, soft_cap: float | None = None,
    sliding_window: int | None = None, short_config: BlockConfig | None = None,
    long_config: BlockConfig | MosaicConfig | None = None, interpret: bool = False,
    out_init: jax.Array | None = None, min_q_len: int | None = None, max_q_len: int | None = None,
    use_mosaic: bool = True, batch_invariant: bool = False,
) -> jax.Array:
    """Pallas version of jaxsgl.kernels.reference.ragged_paged_attention_ref (same contract).

    q [T, H, D]; k_pages, v_pages [num_pages, page_size, KVH, D]; query_start int32[S+1];
    kv_lens int32[S]; page_table int32[S, P]. Returns [T, H, D] in q's dtype.
    Configs default to `default_configs` (the long class to MosaicConfig() on Hopper where it
    applies); interpret=True runs on CPU (for tests), Mosaic configs in GPU interpret mode.
    out_init [T, H, D] (donated) is the buffer the kernels write into, e.g. NaN-filled by
    tests to prove every row is written; by default a fresh uninitialised one.
    min_q_len / max_q_len: promises that every sequence with new tokens has at least / at most
    this many (max 1: a decode step; min 64: a prefill batch). Classes no such sequence falls
    into are not launched, so rows of padding tokens (past query_start[-1]) may be left unwritten.
    use_mosaic=False keeps the default long class on Triton on Hopper too (what other GPUs run).
    batch_invariant: one unsplit Triton class for every sequence (block_configs.default_configs), so
    that each row's sums are the same whatever else shares the step and whatever its new-token count.
    """
    T, H, D = q.shape
    if k_pages.ndim != 4 or k_pages.shape != v_pages.shape:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} must be equal "
                         "[num_pages, page_size, num_kv_heads, head_dim]")
    N, page_size, KVH, Dk = k_pages.shape
    S, P = page_table.shape
    if Dk != D or D > 256:
        raise ValueError(f"head_dim of q ({D}) and KV ({Dk}) must match and be <= 256")
    if H % KVH:
        raise ValueError(f"num_heads {H} is not a multiple of num_kv_heads {KVH}")
    if query_start.shape != (S + 1,) or kv_lens.shape != (S,):
        raise ValueError(f"query_start {query_start.shape} / kv_lens {kv_lens.shape} do not match "
                         f"page_table {page_table.shape}")
    if k_pages.dtype != q.dtype:
        raise ValueError(f"KV dtype {k_pages.dtype} differs from q dtype {q.dtype}")
    for name, cfg in (("short_config", short_config), ("long_config", long_config)):
        if isinstance(cfg, BlockConfig) and (cfg.rows < max(16, H // KVH) or cfg.rows & (cfg.rows - 1)
                                or cfg.block_k < 16 or cfg.block_k & (cfg.block_k - 1)):
            raise ValueError(f"{name} {cfg}: rows and block_k must be powers of 2, >= 16, "
                             f"rows >= heads per KV head ({H // KVH})")
    short, long = default_configs(T, S, P, page_size, H, KVH, D, q.dtype, batch_invariant)
    mosaic, mosaic_min = None, 0
    if long is not None and isinstance(long_config, MosaicConfig):  # every long sequence
        mosaic, long_config = long_config, None
    elif (use_mosaic and long is not None and long_config is None and not interpret and T >= MOSAIC_MIN_Q
          and _mosaic_applies(q.dtype, D, page_size, soft_cap, sliding_window)):
        mosaic, mosaic_min = MosaicConfig(), MOSAIC_MIN_Q  # shorter extends stay on Triton
    short, long = short_config or short, (long_config or long) if long is not None else None
    group = H // KVH
    tile_s = short.rows // group
    classes = [(short, 1, tile_s)]
    if long is not None and long.rows // group > tile_s:
        classes.append((long, tile_s + 1, 2**31 - 1))
    else:
        classes = [(short, 1, 2**31 - 1)]
    if mosaic is not None:
        check_supported(q.dtype, D, page_size, mosaic, soft_cap, sliding_window)
        lo = max(mosaic_min, tile_s + 1)
        # the Mosaic class first (it writes a fresh buffer), the others take q_len < lo
        classes = [(mosaic, lo, 2**31 - 1)] + [(c, a, min(b, lo - 1)) for c, a, b in classes if a < lo]
    lo_q, hi_q = max(min_q_len or 1, 1), max(max_q_len or 2**31 - 1, 1)
    classes = [(c, a, b) for c, a, b in classes if a <= hi_q and b >= lo_q]  # drop the empty ones
    query_start, kv_lens = query_start.astype(jnp.int32), kv_lens.astype(jnp.int32)
    page_table = page_table.astype(jnp.int32)
    k_flat, v_flat = k_pages.reshape(N * page_size, KVH, D), v_pages.reshape(N * page_size, KVH, D)
    if out_init is not None and (out_init.shape != q.shape or out_init.dtype != q.dtype):
        raise ValueError(f"out_init {out_init.shape} {out_init.dtype} must match q {q.shape} {q.dtype}")
    out = out_init
    for cfg, q_min, q_max in classes:
        if isinstance(cfg, MosaicConfig):
            num_tiles = min(S + 1, T // q_min) + T // TILE_TOKENS
            plan = plan_tiles(query_start, kv_lens, T, q_min, max(num_tiles, 1))
            res = paged_extend_mosaic(plan, q, k_pages, v_pages, page_table, sm_scale=sm_scale,
                                      cfg=cfg, interpret=interpret)
            out = res if out is None else jnp.where(
                token_in_class(query_start, T, q_min, q_max)[:, None, None], res, out)
            continue
        tile = cfg.rows // group
        plan = class_plan(query_start, kv_lens, T, tile, q_min, q_max, tile_bound(T, S, tile, q_min, q_max))
        res = _launch(plan, q, k_flat, v_flat, page_table, out, cfg, page_size=page_size,
                      sm_scale=sm_scale, soft_cap=soft_cap, window=sliding_window, interpret=interpret)
        if cfg.num_splits > 1:  # the merge reads the rows of at most this many tokens a tile
            res = combine_splits(*res, plan, out, T, group, q.dtype, tile_tokens=min(tile, q_max, hi_q))
        out = res
    return jnp.zeros_like(q) if out is None else out  # None: the hints rule out every sequence


def _mosaic_applies(dtype, head_dim: int, page_size: int, soft_cap, sliding_window) -> bool:
    """Whether the default long class is the Mosaic GPU kernel: on Hopper (sm_90), for the
    shapes it supports (paged_extend_mosaic.check_supported)."""
    if not on_hopper():
        return False
    try:
        check_supported(dtype, head_dim, page_size, MosaicConfig(), soft_cap, sliding_window)
    except ValueError:
        return False
    return True
