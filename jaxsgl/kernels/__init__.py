"""Attention kernels over paged KV, selected by name.

`ragged_paged_attention` and `write_kv` are what the model calls (and, opt-in while they are timed on
the GPU, `rope_write_attention` for decode steps and `add_rms_norm`); `impl` picks the
implementation:
  "reference"         plain jnp; runs everywhere (the CPU path and the test oracle)
  "pallas"            Pallas kernels; NVIDIA GPUs only: Triton (A100, H100, ...), and on
                      Hopper the Mosaic GPU kernel for extends of >= 64 new tokens
                      (kernels/paged_extend_mosaic.py; bf16/f16, head_dim 64/128, page >= 8)
  "pallas_cudnn"      the kernel, plus cuDNN dense attention for steps that are one fresh
                      prefill of >= 1024 padded tokens (kernels/dense_prefill.py); NVIDIA only
  "pallas_triton"     "pallas_cudnn" without the Mosaic kernel: Triton kernels and cuDNN only,
                      which is what "auto" runs on an A100; on Hopper it measures that path
  "pallas_interpret"  the Pallas kernel in interpret mode; any backend, slow (tests)
  "auto"              "pallas" on Hopper (the Mosaic kernel is within 1.1x of cuDNN, and the
                      dense path's K/V gather and runtime cond cost more than that: docs/perf.md),
                      "pallas_cudnn" on other NVIDIA GPUs, "reference" elsewhere
A requested impl that cannot run raises; nothing falls back silently.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from jaxsgl.kernels import add_norm as _add_norm_kernel
from jaxsgl.kernels import fused_decode
from jaxsgl.kernels.dense_prefill import DENSE_PREFILL_MIN_TOKENS, with_dense_prefill
from jaxsgl.kernels.paged_extend_mosaic import MOSAIC_MIN_Q, on_hopper
from jaxsgl.kernels.ragged_paged_attention import BlockConfig, ragged_paged_attention_pallas
from jaxsgl.kernels.reference import ragged_paged_attention_ref, write_kv_ref

ATTENTION_IMPLS = ("reference", "pallas", "pallas_cudnn", "pallas_triton", "pallas_interpret", "auto")

__all__ = ["ATTENTION_IMPLS", "BlockConfig", "DECODE_HINT", "PREFILL_HINT", "QLenHint", "add_rms_norm",
           "fused_add_norm_applies", "fused_decode_applies",
           "on_nvidia_gpu", "ragged_paged_attention", "resolve_impl", "rope_write_attention", "step_hint",
           "step_hints", "write_kv"]


class QLenHint(NamedTuple):
    """Static promises about a step's new-token counts, over the sequences that have any
    (padding excluded): every q_len >= min_q_len and <= max_q_len. The Pallas kernels skip
    the launches no such sequence needs (~2-5 us each); the reference ignores the hint."""
    min_q_len: int | None = None
    max_q_len: int | None = None


DECODE_HINT = QLenHint(max_q_len=1)  # one new token per sequence: the decode class only
PREFILL_HINT = QLenHint(min_q_len=MOSAIC_MIN_Q)  # prefills/long extends: the extend kernel only


def step_hints(impl: str) -> tuple[QLenHint, ...]:
    """The hints `step_hint` can return for impl: each is a compiled variant of a step shape."""
    if resolve_impl(impl) == "reference":
        return (QLenHint(),)
    return (QLenHint(), DECODE_HINT, PREFILL_HINT)


def step_hint(q_lens: np.ndarray, impl: str) -> QLenHint:
    """The hint a step with these per-sequence new-token counts compiles under: the first of
    step_hints(impl)[1:] whose bounds hold, else the generic QLenHint() (so a bucket shape has
    at most len(step_hints(impl)) variants)."""
    q = np.asarray(q_lens)
    q = q[q > 0]
    for hint in step_hints(impl)[1:]:
        if q.size and q.min() >= (hint.min_q_len or 1) and (hint.max_q_len is None or q.max() <= hint.max_q_len):
            return hint
    return QLenHint()


def on_nvidia_gpu() -> bool:
    """True when JAX's default backend is CUDA (not ROCm, not CPU/TPU)."""
    if jax.default_backend() != "gpu":
        return False
    return "rocm" not in getattr(jax.devices()[0].client, "platform_version", "").lower()


def resolve_impl(impl: str) -> str:
    """Map "auto" to a concrete impl and check the requested one can run here."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention impl {impl!r}; available: {ATTENTION_IMPLS}")
    if impl == "auto":
        if not on_nvidia_gpu():
            return "reference"
        return "pallas" if on_hopper() else "pallas_cudnn"
    if impl in ("pallas", "pallas_cudnn", "pallas_triton") and not on_nvidia_gpu():
        raise ValueError(f"attention impl {impl!r} needs an NVIDIA GPU (Triton lowering), but JAX's "
                         f"default backend is {jax.default_backend()!r}; use 'reference', 'auto', or "
                         "'pallas_interpret' (slow) instead")
    return impl


# The reference's KV block under batch_invariant, and the engine's narrowest page-table width on that
# path (its StepInputBuilder's min_page_tokens), so a narrow table is one block.
INVARIANT_KV_TOKENS = 256


def ragged_paged_attention(q, k_pages, v_pages, query_start, kv_lens, page_table, *, sm_scale: float,
                           soft_cap: float | None = None, sliding_window: int | None = None,
                           impl: str = "reference", hint: QLenHint = QLenHint(), batch_invariant: bool = False):
    """Dispatch to the named implementation (see jaxsgl.kernels.reference for the contract).

    hint (static): promised bounds on the sequences' new-token counts (QLenHint); the kernels
    skip launches only other sequences would need. Rows of padding tokens may then be garbage.
    batch_invariant (static): each row summed in the same order whatever else shares the step
    (block_configs.default_configs; the reference folds its softmax over KV blocks of
    INVARIANT_KV_TOKENS positions, so that the page table's width, which the engine picks by the batch,
    does not order its sums).
    """
    impl = resolve_impl(impl)
    kw = dict(sm_scale=sm_scale, soft_cap=soft_cap, sliding_window=sliding_window)
    if impl == "reference":
        page_size = k_pages.shape[1]
        kv_block = max(1, INVARIANT_KV_TOKENS // page_size) * page_size if batch_invariant else None
        return ragged_paged_attention_ref(q, k_pages, v_pages, query_start, kv_lens, page_table, **kw,
                                          kv_block=kv_block)
    paged = functools.partial(ragged_paged_attention_pallas, interpret=impl == "pallas_interpret",
                              min_q_len=hint.min_q_len, max_q_len=hint.max_q_len,
                              use_mosaic=impl != "pallas_triton", batch_invariant=batch_invariant)
    # cuDNN's dense path takes a prefill only when it is alone in its step: not batch-invariant
    dense_ok = (hint.max_q_len is None or hint.max_q_len >= DENSE_PREFILL_MIN_TOKENS) and not batch_invariant
    if impl in ("pallas_cudnn", "pallas_triton") and dense_ok:
        paged = with_dense_prefill(paged, "cudnn")
    return paged(q, k_pages, v_pages, query_start, kv_lens, page_table, **kw)


def write_kv(k_pages, v_pages, k, v, slots, *, impl: str = "reference"):
    """Scatter new K/V rows into their slots (see jaxsgl.kernels.reference.write_kv_ref).

    Every impl uses XLA's in-place scatter on the donated pages (timed in docs/perf.md,
    "Attention kernels"); a decode step can instead write inside its attention kernel
    (`rope_write_attention`, opt-in: $JAXSGL_FUSED_DECODE=1).
    """
    resolve_impl(impl)
    return write_kv_ref(k_pages, v_pages, k, v, slots)


def fused_decode_applies(impl: str, hint: QLenHint, enabled: bool | None = None) -> bool:
    """Whether a step under `hint` runs RoPE, the KV write and attention as one kernel
    (`rope_write_attention`): a Pallas impl, a decode step (max_q_len 1), and the setting on
    (enabled, default fused_decode.FUSED_DECODE: $JAXSGL_FUSED_DECODE)."""
    on = fused_decode.FUSED_DECODE if enabled is None else enabled
    return on and hint.max_q_len == 1 and resolve_impl(impl) != "reference"


def rope_write_attention(qkv, inv_freq, k_pages, v_pages, query_start, kv_lens, page_table, slots, *,
                         sm_scale: float, soft_cap: float | None = None, sliding_window: int | None = None,
                         impl: str = "pallas"):
    """A decode step's RoPE (q and the new K), KV write and attention in one launch
    (kernels/fused_decode.py). Returns (out [T, H, D], k_pages, v_pages)."""
    impl = resolve_impl(impl)
    if impl == "reference":
        raise ValueError("rope_write_attention is a Pallas kernel: use impl 'pallas', 'pallas_triton', "
                         "'pallas_cudnn' or 'pallas_interpret' (the reference path is apply_rope, write_kv "
                         "and ragged_paged_attention)")
    return fused_decode.rope_write_attention_pallas(
        qkv, inv_freq, k_pages, v_pages, query_start, kv_lens, page_table, slots, sm_scale=sm_scale,
        soft_cap=soft_cap, sliding_window=sliding_window, interpret=impl == "pallas_interpret")


def fused_add_norm_applies(impl: str, enabled: bool | None = None) -> bool:
    """Whether the model runs each residual add and the RMSNorm after it as one kernel
    (`add_rms_norm`): a Pallas impl and the setting on (enabled, default
    add_norm.FUSED_ADD_NORM: $JAXSGL_FUSED_ADD_NORM)."""
    on = _add_norm_kernel.FUSED_ADD_NORM if enabled is None else enabled
    return on and resolve_impl(impl) != "reference"


def add_rms_norm(x, delta, w, *, eps: float, impl: str = "pallas"):
    """(x + delta, rms_norm(x + delta) * w) in one Triton launch (kernels/add_norm.py)."""
    impl = resolve_impl(impl)
    if impl == "reference":
        raise ValueError("add_rms_norm is a Pallas kernel: use a Pallas impl (the reference path is "
                         "x + delta, then forward.rms_norm)")
    return _add_norm_kernel.add_rms_norm_pallas(x, delta, w, eps=eps, interpret=impl == "pallas_interpret")
