"""Launch shapes of the Triton attention kernel's two sequence classes (ragged_paged_attention.py): the
BlockConfig each class launches with, and `default_configs`, which picks them from a step's static shape,
including the decode class's flash-decoding splits, their floor (`MIN_SPLIT_TOKENS`,
$JAXSGL_MIN_SPLIT_TOKENS) and cap (`MAX_SPLITS`, $JAXSGL_MAX_SPLITS), or batch-invariant shapes. Mutates nothing."""
from __future__ import annotations

import os
from typing import NamedTuple

import jax.numpy as jnp

from jaxsgl.kernels.tile_plans import cdiv


class BlockConfig(NamedTuple):
    """Static launch shape of one sequence class."""
    rows: int  # query rows (tokens x q-heads-per-kv-head) per program; power of 2, >= 16
    block_k: int  # KV tokens per inner step; power of 2, >= 16
    num_splits: int = 1  # KV splits per tile (flash-decoding); 1 writes the output directly
    num_warps: int = 4
    num_stages: int = 2
    reverse: bool = False  # launch tiles last-first (long causal tiles start first)
    overlap: bool = False  # software-pipeline q.k^T of the next block over this block's softmax
    single_loop: bool = False  # one masked loop over all blocks (no separate diagonal loop)


def next_pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


# The fewest KV tokens (of the page table's width) per flash-decoding split of the decode class. 128 since
# session 20 (8B on the H200, benchmarks/device/decode_split.sh: batch 1's attention 387 -> 232 us a step at
# ctx 512, the step 2.9% / 3.9% faster at 512 / 2k on a narrow page table, batch 8 and 32 within noise;
# 64 no better; docs/perf.md). A model-wide page table splits batch 1 sixteen ways at either floor.
# $JAXSGL_MIN_SPLIT_TOKENS sets another value (part of the executable cache's key).
_MIN_SPLIT = os.environ.get("JAXSGL_MIN_SPLIT_TOKENS", "128")
if not _MIN_SPLIT.isdigit() or int(_MIN_SPLIT) < 1:
    raise ValueError(f"JAXSGL_MIN_SPLIT_TOKENS={_MIN_SPLIT!r}: expected a positive number of tokens")
MIN_SPLIT_TOKENS = int(_MIN_SPLIT)

# The most splits a decode sequence's KV gets (batch 1 and 2 reach it: 8 KV heads x 16 = 128 programs).
# $JAXSGL_MAX_SPLITS sets another value (part of the executable cache's key).
_MAX_SPLITS = os.environ.get("JAXSGL_MAX_SPLITS", "16")
if not _MAX_SPLITS.isdigit() or int(_MAX_SPLITS) < 1:
    raise ValueError(f"JAXSGL_MAX_SPLITS={_MAX_SPLITS!r}: expected a positive number of splits")
MAX_SPLITS = int(_MAX_SPLITS)


def default_configs(num_tokens: int, num_seqs: int, pages_per_seq: int, page_size: int,
                    num_heads: int, num_kv_heads: int, head_dim: int,
                    dtype, batch_invariant: bool = False) -> tuple[BlockConfig, BlockConfig | None]:
    """Block shapes for the short (decode) class and the long (extend) class, or None
    when no sequence of this step's static shape can be long. Tuned on an H100
    (benchmarks/attention.py --tune; docs/perf.md).

    By default the decode class splits each sequence's KV into as many parts as fill the GPU, so the
    order of a row's sums depends on how many sequences share its step (its padded batch size), and
    rows that the engine batches differently (overlap scheduling, a cached prefix) can part at bf16
    near-ties; a row's class, and so its kernel, also follows how many tokens its sequence adds in the
    step, which a cached prefix or a prefill chunk's boundary changes. batch_invariant: one class for
    every sequence, of the extend class's shape, unsplit and in one masked loop (a block a row sees
    whole is masked or not as its tile starts, and the compiler may round the two loops' code
    apart), so every row sums its KV blocks in the same order in the same code whatever its step.
    Decode with a long KV at a small batch loses flash-decoding's parallelism: its cost."""
    group = num_heads // num_kv_heads
    small = jnp.dtype(dtype).itemsize <= 2
    rows_s = max(16, next_pow2(group))
    rows_l = max(64 if small else 32, rows_s)
    if batch_invariant:
        return BlockConfig(rows_l, 32, 1, num_warps=4, num_stages=2, single_loop=True), None
    max_ctx = pages_per_seq * page_size
    target = 2 * 132  # two programs per H100 multiprocessor
    programs = num_seqs * num_kv_heads
    splits = 1
    if programs < target:  # flash-decoding: split each sequence's KV, >= MIN_SPLIT_TOKENS a split
        splits = max(1, min(cdiv(target, programs), max_ctx // MIN_SPLIT_TOKENS, MAX_SPLITS))
    if splits == 1 and small:  # enough programs: longer KV blocks (64 x 2k: 216 vs 232 us)
        short = BlockConfig(rows_s, 128, 1, num_warps=4, num_stages=2)
    else:
        short = BlockConfig(rows_s, 64 if small else 32, splits, num_warps=4, num_stages=3 if small else 2)
    if rows_l // group <= rows_s // group or num_tokens <= rows_s // group:
        return short, None
    programs_l = max(1, num_tokens // (rows_l // group)) * num_kv_heads
    splits_l = 1
    if programs_l < target:
        splits_l = max(1, min(cdiv(target, programs_l), max_ctx // 1024, 16))
    return short, BlockConfig(rows_l, 32, splits_l, num_warps=4, num_stages=2, reverse=True)
