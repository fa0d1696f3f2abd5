"""Extend/prefill attention over paged KV as a Mosaic GPU kernel (Hopper: TMA + wgmma).

The long class of `ragged_paged_attention_pallas` (sequences with more new tokens than
a decode tile) can run here instead of through the Triton lowering. One CUDA block
handles one (tile of 2 x 64 new tokens of one sequence, query head), in three
warpgroups, in the FlashAttention-3 style:

    warpgroup 2 (memory):  for each KV block: one TMA copy per page -> K/V SMEM ring slot
    warpgroups 0, 1:       64 query rows each; s = q.k^T (wgmma), online softmax, o += p.v

A KV block of `block_k` tokens is gathered from `block_k // page_size` pages (or one
slice of a larger page), each page one TMA box of [page_size, head_dim]: paging costs
one page-table read per page, nothing per token. Tiles never write rows of another
sequence: each warpgroup stores its rows through a ladder of 64/32/.../1-row TMA
stores. KV slots past the tile's last position can hold anything (NaN included): they
are masked out of the scores and zeroed in the V buffer before p.v.

Limits (checked by `check_supported`): bf16/f16, head_dim 64 or 128, power-of-2 page
size >= 8, no soft cap, no sliding window. Runs in Pallas' GPU interpret mode on CPU
(tests) and compiles only for sm_90 (H100/H200).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

MASK = -1e30
LOG2E = math.log2(math.e)
ROWS = 64  # query rows per compute warpgroup (one wgmma M)
TILE_TOKENS = 2 * ROWS  # query rows per CUDA block
MOSAIC_MIN_Q = 64  # default: shorter extends stay on the Triton kernel (16-token tiles)
ALIGN = 8  # a tile's first query row is a multiple of this (SMEM tile height)


class MosaicConfig(NamedTuple):
    """Static launch shape of the Mosaic GPU extend kernel."""
    block_k: int = 128  # KV tokens per pipeline step; multiple of 64
    stages: int = 2  # K/V SMEM ring slots (TMA runs this many steps ahead)
    schedule_barrier: bool = True  # ping-pong the two compute warpgroups' wgmmas
    reverse: bool = True  # launch tiles last-first (long causal tiles start first)


def on_hopper() -> bool:
    """True when JAX's default device is an sm_90 GPU (H100/H200): where this kernel compiles."""
    return jax.default_backend() == "gpu" and getattr(jax.devices()[0], "compute_capability", "") == "9.0"


def check_supported(q_dtype, head_dim: int, page_size: int, cfg: MosaicConfig,
                    soft_cap: float | None, sliding_window: int | None) -> None:
    """Raise ValueError naming the first property this kernel does not handle."""
    if jnp.dtype(q_dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        raise ValueError(f"the Mosaic extend kernel needs bf16/f16, got {jnp.dtype(q_dtype)}")
    if head_dim not in (64, 128):
        raise ValueError(f"the Mosaic extend kernel needs head_dim 64 or 128, got {head_dim}")
    if page_size < 8 or page_size & (page_size - 1):
        raise ValueError(f"the Mosaic extend kernel needs a power-of-2 page size >= 8, got {page_size}")
    if cfg.block_k % 64 or cfg.block_k & (cfg.block_k - 1) or cfg.stages < 2:
        raise ValueError(f"{cfg}: block_k must be a power of 2 multiple of 64 and stages >= 2")
    if soft_cap is not None or sliding_window is not None:
        raise ValueError("the Mosaic extend kernel has no soft cap or sliding window")


def paged_extend_mosaic(plan: jax.Array, q: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
                        page_table: jax.Array, *, sm_scale: float, cfg: MosaicConfig,
                        interpret: bool = False) -> jax.Array:
    """Attention for the plan's tiles; returns [T, H, D] with only those tiles' rows written.

    plan int32[num_tiles, 4] = (seq, first row, num rows, first position) as built by
    `plan_tiles`; q [T, H, D];
    k_pages/v_pages [num_pages, page_size, KVH, D]; page_table int32[S, P].
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu  # imports absl; only when used

    T, H, D = q.shape
    num_pages, page_size, KVH, _ = k_pages.shape
    S, P = page_table.shape
    group = H // KVH
    bk, stages = cfg.block_k, cfg.stages
    piece = min(page_size, bk)  # tokens per TMA copy
    pieces = bk // piece
    num_tiles = plan.shape[0]
    dtype = q.dtype
    c = sm_scale * LOG2E
    wgmma_layout = plgpu.Layout.WGMMA

    def cast(x, layout):  # layouts are codegen hints; jax 0.10's interpreter lacks layout_cast
        return x if interpret else plgpu.layout_cast(x, layout)

    def iota(shape, dim):
        return cast(lax.broadcasted_iota(jnp.int32, shape, dim), wgmma_layout)

    def kernel(plan_ref, q_ref, k_ref, v_ref, pt_ref, o_ref, q_smem, k_smem, v_smem, o_smem,
               k_full, v_full, q_full, k_free, v_free, sched, v_clean):
        head = lax.axis_index("head")
        tile = lax.axis_index("tile")
        if cfg.reverse:
            tile = num_tiles - 1 - tile
        wg = lax.axis_index("wg")
        seq, row0 = plan_ref[tile, 0], plan_ref[tile, 1]
        nrows, pos0 = plan_ref[tile, 2], plan_ref[tile, 3]
        base = (row0 // ALIGN) * ALIGN  # TMA into tiled SMEM needs 8-aligned Q rows
        lead = row0 - base  # rows of the previous sequence loaded ahead of ours (never stored)
        hi = jnp.maximum(pos0 + nrows, 0)  # KV positions [0, hi) are visible to the tile
        nblk = (hi + bk - 1) // bk
        nfull = jnp.clip((pos0 + 1) // bk, 0, nblk)  # blocks below every real row's diagonal

        def sched_sync():
            if cfg.schedule_barrier:
                plgpu.barrier_arrive(sched)
                plgpu.barrier_wait(sched)

        @pl.when(wg < 2)
        def _compute():
            plgpu.set_max_registers(232, action="increase")
            r0 = base + wg * ROWS
            lo = jnp.clip(lead - wg * ROWS, 0, ROWS)  # this warpgroup's real rows: [lo, lo + count)
            count = jnp.clip(lead + nrows - wg * ROWS, 0, ROWS) - lo
            my_q = q_smem.at[wg]
            plgpu.copy_gmem_to_smem(q_ref.at[pl.ds(r0, ROWS), head], my_q, q_full.at[wg])
            plgpu.barrier_wait(q_full.at[wg])
            m = cast(jnp.full((ROWS,), MASK, jnp.float32), wgmma_layout.reduce(1))
            l = cast(jnp.full((ROWS,), 0, jnp.float32), wgmma_layout.reduce(1))
            acc = cast(jnp.full((ROWS, D), 0, jnp.float32), wgmma_layout)
            if cfg.schedule_barrier:
                pl.when(wg == 1)(sched_sync)

            def step(b, carry, masked: bool):
                acc, m, l = carry
                slot = lax.rem(b, stages)
                with jax.named_scope("wait_k"):
                    plgpu.barrier_wait(k_full.at[slot])
                with jax.named_scope("qk"):
                    s = _scores(my_q, k_smem.at[slot], sched_sync, interpret)
                    plgpu.barrier_arrive(k_free.at[slot])
                with jax.named_scope("softmax"):
                    if masked:
                        row, col = iota((ROWS, bk), 0), iota((ROWS, bk), 1)
                        s = jnp.where(col + b * bk <= row + (pos0 - lead + wg * ROWS), s, MASK)
                    m_new = jnp.maximum(m, s.max(axis=1) * c)
                    alpha = jnp.exp2(m - m_new)
                    p = jnp.exp2(s * c - lax.broadcast_in_dim(m_new, s.shape, [0]))
                    acc = acc * lax.broadcast_in_dim(alpha, acc.shape, [0])
                    l = l * alpha + p.sum(axis=1)
                    p16 = p.astype(dtype)
                    # Keep the softmax ahead of the barriers below (as in JAX's FA3 kernel): without
                    # this the compiler sinks it past the waits and the warpgroups stop overlapping.
                    acc, l, m_new, p16 = lax.optimization_barrier((acc, l, m_new, p16))
                with jax.named_scope("wait_v"):
                    if cfg.schedule_barrier:
                        plgpu.barrier_arrive(sched)
                    plgpu.barrier_wait(v_full.at[slot])
                    if masked:  # V rows past `hi` may be garbage (NaN): 0 * NaN would leak
                        @pl.when((b + 1) * bk > hi)  # the last block only: warpgroup 0 zeroes them
                        def _sanitize():
                            @pl.when(wg == 0)
                            def _zero():
                                for c0 in range(0, bk, ROWS):  # 64 rows at a time: fewer registers
                                    rows_ref = v_smem.at[slot, pl.ds(c0, ROWS)]
                                    j = iota((ROWS, D), 0) + (b * bk + c0)
                                    v = rows_ref[...]  # tiled SMEM loads in the WGMMA layout
                                    rows_ref[...] = jnp.where(j < hi, v, jnp.zeros_like(v))
                                plgpu.commit_smem()
                                plgpu.barrier_arrive(v_clean)
                            plgpu.barrier_wait(v_clean)
                    if cfg.schedule_barrier:
                        plgpu.barrier_wait(sched)
                with jax.named_scope("pv"):
                    acc = _accumulate_pv(acc, p16, v_smem.at[slot], interpret)
                    plgpu.barrier_arrive(v_free.at[slot])
                return acc, m_new, l

            carry = lax.fori_loop(0, nfull, lambda b, cr: step(b, cr, False), (acc, m, l))
            acc, m, l = lax.fori_loop(nfull, nblk, lambda b, cr: step(b, cr, True), carry)
            if cfg.schedule_barrier:
                pl.when(wg == 0)(sched_sync)
            l_safe = jnp.where(l == 0.0, jnp.ones_like(l), l)
            out = acc / lax.broadcast_in_dim(l_safe, acc.shape, [0])
            o_smem.at[pl.ds(wg * ROWS, ROWS)][...] = out.astype(dtype)
            plgpu.commit_smem()
            start = lo
            n = ROWS
            while n:  # count = sum of distinct powers of 2: one TMA store each
                @pl.when(count & n != 0)
                def _store():
                    plgpu.copy_smem_to_gmem(o_smem.at[pl.ds(wg * ROWS + start, n)],
                                            o_ref.at[pl.ds(r0 + start, n), head])
                start = start + (count & n)
                n //= 2
            plgpu.wait_smem_to_gmem(0)

        @pl.when(wg == 2)
        def _memory():
            plgpu.set_max_registers(40, action="decrease")
            kvh = head // group
            pt_row = jnp.minimum(seq, S - 1)  # the padding pseudo-sequence reads no KV

            def pages_of(b):  # block b's page-table reads, issued back to back
                pages = []
                for i in range(pieces):
                    idx = jnp.minimum((b * bk + i * piece) // page_size, P - 1)
                    pages.append(jnp.clip(pt_ref[pt_row, idx], 0, num_pages - 1))
                return tuple(pages)

            def fetch(src_ref, dst_smem, bar, b, slot, pages):
                off = (b % (page_size // bk)) * bk if page_size > bk else 0
                for i, page in enumerate(pages):
                    plgpu.copy_gmem_to_smem(src_ref.at[page, pl.ds(off, piece), kvh],
                                            dst_smem.at[slot, pl.ds(i * piece, piece)], bar.at[slot])

            for b in range(stages):
                @pl.when(b < nblk)
                def _prologue():
                    pages = pages_of(b)
                    fetch(k_ref, k_smem, k_full, b, b, pages)
                    fetch(v_ref, v_smem, v_full, b, b, pages)

            def steady(b, pages):  # pages: block b's, read one iteration ahead
                slot = lax.rem(b, stages)
                pages_next = pages_of(b + 1)  # in flight while we wait for a free slot
                with jax.named_scope("wait_free"):
                    plgpu.barrier_wait(k_free.at[slot])
                fetch(k_ref, k_smem, k_full, b, slot, pages)
                with jax.named_scope("wait_free"):
                    plgpu.barrier_wait(v_free.at[slot])
                fetch(v_ref, v_smem, v_full, b, slot, pages)
                return pages_next

            lax.fori_loop(stages, jnp.maximum(nblk, stages), steady, pages_of(stages))

            @pl.loop(jnp.maximum(nblk - stages, 0), nblk)
            def _drain(b):  # see every slot consumed before the block retires
                slot = lax.rem(b, stages)
                plgpu.barrier_wait(k_free.at[slot])
                plgpu.barrier_wait(v_free.at[slot])

    swz = plgpu.SwizzleTransform(128)
    tiling = plgpu.TilingTransform((8, 128 // jnp.dtype(dtype).itemsize))
    scratch = dict(
        q_smem=plgpu.SMEM((2, ROWS, D), dtype, transforms=(tiling, swz)),
        k_smem=plgpu.SMEM((stages, bk, D), dtype, transforms=(tiling, swz)),
        v_smem=plgpu.SMEM((stages, bk, D), dtype, transforms=(tiling, swz)),
        o_smem=plgpu.SMEM((2 * ROWS, D), dtype),
        k_full=plgpu.Barrier(num_arrivals=pieces, num_barriers=stages),
        v_full=plgpu.Barrier(num_arrivals=pieces, num_barriers=stages),
        q_full=plgpu.Barrier(num_barriers=2),
        k_free=plgpu.Barrier(num_arrivals=2, num_barriers=stages),
        v_free=plgpu.Barrier(num_arrivals=2, num_barriers=stages),
        sched=plgpu.Barrier(num_arrivals=2),
        v_clean=plgpu.Barrier(),
    )
    run = plgpu.kernel(
        kernel,
        out_type=jax.ShapeDtypeStruct((T, H, D), dtype),
        scratch_types=scratch,
        grid=(H, num_tiles),
        grid_names=("head", "tile"),
        num_threads=3,
        thread_name="wg",
        compiler_params=plgpu.CompilerParams(approx_math=True),
        interpret=_interpret_params() if interpret else None,
    )
    return run(plan, q, k_pages, v_pages, page_table)


def plan_tiles(query_start: jax.Array, kv_lens: jax.Array, num_tokens: int, q_min: int,
               num_tiles: int) -> jax.Array:
    """int32[num_tiles, 4] rows (seq, first row, num rows, first position) for the sequences
    with q_len >= q_min, plus the padding pseudo-sequence past query_start[-1] when it is that
    long (kv_len 0: outputs zeros). A sequence's tiles are 128 rows of the token axis starting
    at its first row rounded down to 8, so its first tile may hold fewer than 128 of its rows.
    Tiles past the count are idle (num rows 0).
    """
    qs = jnp.concatenate([query_start, jnp.full((1,), num_tokens, jnp.int32)])
    q_len = qs[1:] - qs[:-1]
    kvl = jnp.concatenate([kv_lens, jnp.zeros((1,), jnp.int32)])
    lead = qs[:-1] % ALIGN
    n = jnp.where(q_len >= q_min, (q_len + lead + TILE_TOKENS - 1) // TILE_TOKENS, 0)
    end = jnp.cumsum(n)
    i = jnp.arange(num_tiles, dtype=jnp.int32)
    live = i < end[-1]
    seq = jnp.minimum(jnp.searchsorted(end, i, side="right", method="compare_all"),
                      q_len.shape[0] - 1).astype(jnp.int32)
    k = i - (end[seq] - n[seq])  # tile index within its sequence
    first = qs[seq] - lead[seq] + k * TILE_TOKENS
    row0 = jnp.maximum(first, qs[seq])
    nrows = jnp.where(live, jnp.minimum(first + TILE_TOKENS, qs[seq + 1]) - row0, 0)
    pos0 = jnp.where(live, kvl[seq] - q_len[seq] + (row0 - qs[seq]), 0)
    return jnp.stack([seq, jnp.where(live, row0, 0), nrows, pos0], axis=1).astype(jnp.int32)


def _scores(q_smem, k_slot, after_issue, interpret: bool) -> jax.Array:
    """q @ k^T (f32) with both operands in SMEM; after_issue runs while the wgmma is in flight.

    Pallas' GPU interpret mode cannot take a transposed SMEM ref as a wgmma operand, so
    there the product is a plain dot of the loaded tiles. Those loads are generic-proxy
    reads of a slot the TMA (async proxy) refills once it is released, so they are fenced
    (`commit_smem`: fence.proxy.async) before the caller's release; wgmma on the GPU
    reads through the async proxy itself and needs no fence (jax >= 0.12's race detector
    tracks the two proxies apart and reports the unfenced loads).
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu
    if interpret:
        after_issue()
        s = lax.dot_general(q_smem[...], k_slot[...], (((1,), (1,)), ((), ())),
                            preferred_element_type=jnp.float32)
        plgpu.commit_smem()
        return s

    def scope(acc_ref):
        plgpu.wgmma(acc_ref, q_smem, k_slot.transpose((1, 0)))
        after_issue()
        return acc_ref[...]
    return pl.run_scoped(scope, plgpu.ACC((q_smem.shape[0], k_slot.shape[0]), jnp.float32))


def _accumulate_pv(acc: jax.Array, p16: jax.Array, v_slot, interpret: bool) -> jax.Array:
    """acc + p16 @ v_slot, accumulated in place by wgmma on the GPU.

    Pallas' GPU interpret mode takes only SMEM refs as wgmma operands (p16 lives in
    registers), so there it is a plain dot of the loaded tile, its loads fenced before the
    slot is released as in `_scores`.
    """
    from jax.experimental.pallas import mosaic_gpu as plgpu
    if interpret:
        acc = acc + lax.dot_general(p16, v_slot[...], (((1,), (0,)), ((), ())),
                                    preferred_element_type=jnp.float32)
        plgpu.commit_smem()
        return acc

    def in_place(acc_ref):
        plgpu.wgmma(acc_ref, p16, v_slot)
    return pl.run_state(in_place)(plgpu.ACC.init(acc))


def _interpret_params():
    """Pallas' GPU interpret mode (simulated warpgroups, barriers and TMA on the CPU)."""
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
    # Q tiles may run past the last token: TMA fills zeros there; the interpreter
    # gives NaN (uninitialised), which only reaches rows that are never stored.
    return InterpretGPUParams(out_of_bounds_reads="uninitialized", detect_races=True)
