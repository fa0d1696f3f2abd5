"""The pooled grammar tables on the device, and the two jnp functions the sampler uses.

Layout and placement: jaxsgl/constrained/table_pool.py. A row of a step with grammar state g
(a global state id; -1 = unconstrained) may sample token t iff bit t of masks[states[g, 0]]
is set; after sampling t its next state is the exception (t, n) of g if one exists, else
states[g, 1]. Both run inside the jitted step, so constrained requests never wait for a
host-side mask and overlap scheduling keeps running for them.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl.constrained.table_pool import Upload


class GrammarTables(NamedTuple):
    states: jax.Array  # int32[S_cap, 4]: (mask row, default next, exception start, exception count)
    masks: jax.Array   # uint32[M_cap, W]
    exc: jax.Array     # int32[E_cap, 2]: (token, next), sorted by token within a state


def init_tables(max_states: int, max_mask_rows: int, max_exceptions: int, words: int) -> GrammarTables:
    return GrammarTables(jnp.zeros((max_states, 4), jnp.int32), jnp.zeros((max_mask_rows, words), jnp.uint32),
                         jnp.zeros((max(max_exceptions, 1), 2), jnp.int32))


def _bucket(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@functools.partial(jax.jit, donate_argnums=(0,))
def _scatter(table: jax.Array, idx: jax.Array, rows: jax.Array) -> jax.Array:
    return table.at[idx].set(rows, mode="drop")  # padding indices point past the end: dropped


def _padded(idx: np.ndarray, rows: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad to a power of two (bounded compile count); padding rows go to index `capacity` (dropped)."""
    n = _bucket(max(idx.size, 1))
    pidx = np.full(n, capacity, np.int32)
    pidx[:idx.size] = idx
    prows = np.zeros((n,) + rows.shape[1:], rows.dtype)
    prows[:idx.size] = rows
    return pidx, prows


def apply_upload(t: GrammarTables, up: Upload) -> GrammarTables:
    """Write an automaton's rows into the tables (the old tables are donated)."""
    out = []
    for table, idx, rows in ((t.states, up.state_idx, up.state_rows), (t.masks, up.mask_idx, up.mask_rows),
                             (t.exc, up.exc_idx, up.exc_rows)):
        if idx.size:
            table = _scatter(table, *_padded(idx, rows, table.shape[0]))
        out.append(table)
    return GrammarTables(*out)


def unpack_bits(words: jax.Array, vocab: int) -> jax.Array:
    """bool[S, vocab] from uint32[S, W] bitmask rows (bit t % 32 of word t // 32)."""
    bits = (words[:, :, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return bits.reshape(words.shape[0], -1)[:, :vocab] != 0


def allowed_tokens(t: GrammarTables, state: jax.Array, vocab: int) -> jax.Array:
    """bool[S, vocab]: tokens each row may sample (every token where state < 0)."""
    return unpack_bits(t.masks[t.states[jnp.maximum(state, 0), 0]], vocab) | (state < 0)[:, None]


def next_states(t: GrammarTables, state: jax.Array, tokens: jax.Array, vocab: int) -> jax.Array:
    """int32[S]: the global state after each row's token (-1 where state < 0). A vectorised
    lower-bound binary search over the state's exceptions (at most `vocab` per state), unrolled:
    a device while loop would cost a launch and a host round trip of its predicate per iteration."""
    info = t.states[jnp.maximum(state, 0)]
    start, count = info[:, 2], info[:, 3]
    lo, hi = start, start + count
    cap = t.exc.shape[0]
    for _ in range(max(1, math.ceil(math.log2(min(cap, vocab) + 1)))):
        active = lo < hi
        mid = (lo + hi) // 2
        less = t.exc[jnp.clip(mid, 0, cap - 1), 0] < tokens  # one gather, no column copy
        lo, hi = jnp.where(active & less, mid + 1, lo), jnp.where(active & ~less, mid, hi)
        # each step's bounds are materialized: XLA would otherwise inline the whole dependent chain
        # into every use (jax 0.12: minutes of compile; with the barrier 0.6 s)
        lo, hi = jax.lax.optimization_barrier((lo, hi))
    hit = t.exc[jnp.clip(lo, 0, cap - 1)]
    found = (lo < start + count) & (hit[:, 0] == tokens)
    nxt = jnp.where(found, hit[:, 1], info[:, 1])
    return jnp.where(state < 0, -1, nxt)
