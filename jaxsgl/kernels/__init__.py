"""Attention kernels over paged KV, selected by name.

`ragged_paged_attention` and `write_kv` are what the model calls; `impl` picks the
implementation ("reference": plain jnp, runs everywhere).
"""
from jaxsgl.kernels.reference import ragged_paged_attention_ref, write_kv_ref

ATTENTION_IMPLS = ("reference",)


def ragged_paged_attention(q, k_pages, v_pages, query_start, kv_lens, page_table, *, sm_scale,
                           soft_cap=None, sliding_window=None, impl: str = "reference"):
    """Dispatch to the named implementation (see jaxsgl.kernels.reference for the contract)."""
    if impl != "reference":
        raise ValueError(f"unknown attention impl {impl!r}; available: {ATTENTION_IMPLS}")
    return ragged_paged_attention_ref(q, k_pages, v_pages, query_start, kv_lens, page_table,
                                      sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window)


def write_kv(k_pages, v_pages, k, v, slots, *, impl: str = "reference"):
    """Scatter new K/V rows into their slots (see jaxsgl.kernels.reference.write_kv_ref)."""
    return write_kv_ref(k_pages, v_pages, k, v, slots)
