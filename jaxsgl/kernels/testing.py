"""Random paged-attention batches for tests and benchmarks (numpy; no kernels here).

Unused pages and the slots past each sequence's kv_len are filled with `poison`
(NaN by default), so a kernel that reads garbage, or lets a masked value leak,
shows NaN in its output.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np


class PagedBatch(NamedTuple):
    """Numpy arrays of one step: q [T,H,D], k/v_pages [N,ps,KVH,D], and the ragged layout."""
    q: np.ndarray
    k_pages: np.ndarray
    v_pages: np.ndarray
    query_start: np.ndarray
    kv_lens: np.ndarray
    page_table: np.ndarray

    def args(self, dtype):
        """Device arrays in the order ragged_paged_attention takes them (floats cast to dtype)."""
        import jax.numpy as jnp
        return (jnp.asarray(self.q, dtype), jnp.asarray(self.k_pages, dtype), jnp.asarray(self.v_pages, dtype),
                jnp.asarray(self.query_start), jnp.asarray(self.kv_lens), jnp.asarray(self.page_table))


def random_mix(rng: np.random.Generator, num_tokens: int, num_seqs: int, max_kv: int,
               max_q: int | None = None) -> list[tuple[int, int]]:
    """(q_len, kv_len) per sequence slot: a ragged mix of decode, extend, prefill and empty
    (0, 0) padding slots anywhere, with at most num_tokens new tokens in all."""
    out, left = [], num_tokens
    for _ in range(num_seqs):
        kind = rng.choice(["decode", "extend", "prefill", "empty"], p=[0.4, 0.3, 0.15, 0.15])
        if kind == "empty" or left == 0:
            out.append((0, 0))
            continue
        kv = int(rng.integers(1, max_kv + 1))
        if kind == "decode":
            q = 1
        elif kind == "prefill":
            q = min(kv, left)
            kv = q
        else:
            q = int(rng.integers(1, min(kv, left, max_q or kv) + 1))
        q = min(q, left, max_q or q)
        kv = max(kv, q)
        out.append((q, kv))
        left -= q
    return out


def make_batch(rng: np.random.Generator, seqs: list[tuple[int, int]], *, num_tokens: int,
               num_heads: int, num_kv_heads: int, head_dim: int, page_size: int,
               pages_per_seq: int, num_pages: int | None = None,
               poison: float = np.nan) -> PagedBatch:
    """Lay out `seqs` ((q_len, kv_len) per slot) on randomly permuted pages."""
    S = len(seqs)
    need = [-(-kv // page_size) for _, kv in seqs]
    if max(need + [0]) > pages_per_seq:
        raise ValueError(f"a sequence needs {max(need)} pages > pages_per_seq {pages_per_seq}")
    num_pages = num_pages or sum(need) + 2
    if num_pages < sum(need):
        raise ValueError(f"num_pages {num_pages} < {sum(need)} needed")
    perm = rng.permutation(num_pages).astype(np.int32)
    shape = (num_pages, page_size, num_kv_heads, head_dim)
    k = np.full(shape, poison, np.float32)
    v = np.full(shape, poison, np.float32)
    qs = np.zeros(S + 1, np.int32)
    kv_lens = np.zeros(S, np.int32)
    pt = np.zeros((S, pages_per_seq), np.int32)  # PAD_PAGE 0 past each sequence's pages
    t = p = 0
    for i, ((ql, kl), n) in enumerate(zip(seqs, need)):
        pages = perm[p:p + n]
        p += n
        pt[i, :n] = pages
        kv_lens[i] = kl
        flat = np.arange(kl)
        k[pages[flat // page_size], flat % page_size] = rng.standard_normal((kl, num_kv_heads, head_dim))
        v[pages[flat // page_size], flat % page_size] = rng.standard_normal((kl, num_kv_heads, head_dim))
        t += ql
        qs[i + 1] = t
    if t > num_tokens:
        raise ValueError(f"{t} new tokens > num_tokens {num_tokens}")
    q = rng.standard_normal((num_tokens, num_heads, head_dim)).astype(np.float32)
    return PagedBatch(q, k, v, qs, kv_lens, pt)
