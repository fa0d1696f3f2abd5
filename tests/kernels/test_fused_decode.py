"""The fused decode kernel (kernels/fused_decode.py: RoPE, KV write and attention in one launch)
against the reference path it replaces: apply_rope on q and K, write_kv, then attention.

Interpret mode on the CPU; the slot of each new token is poisoned with NaN first, so a kernel that
read it back instead of attending to the token from registers shows NaN."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl import kernels
from jaxsgl.kernels import fused_decode, testing
from jaxsgl.kernels.ragged_paged_attention import BlockConfig
from jaxsgl.kernels.reference import ragged_paged_attention_ref, write_kv_ref
from jaxsgl.model.forward import apply_rope, forward, init_kv_cache, step_to_device
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import random_weights, weight_specs

# name: (num_heads, num_kv_heads, head_dim, page_size, tokens, seqs, window, config, dtype)
CASES = {
    "gqa4_default": (8, 2, 64, 16, 8, 5, None, None, jnp.float32),
    "gqa4_splits4": (8, 2, 64, 16, 8, 5, None, BlockConfig(16, 16, 4), jnp.float32),
    "window_splits3": (8, 2, 64, 16, 8, 5, 20, BlockConfig(16, 16, 3), jnp.float32),
    "bf16": (8, 2, 64, 16, 8, 5, None, None, jnp.bfloat16),
    "mha_page3_splits2": (4, 4, 32, 3, 6, 6, None, BlockConfig(16, 16, 2), jnp.float32),
    "one_padding_token": (8, 2, 64, 16, 4, 3, None, BlockConfig(16, 32, 1), jnp.float32),
    "head_dim_48": (4, 2, 48, 16, 6, 4, None, BlockConfig(16, 16, 2), jnp.float32),  # lanes past D masked
}


def _decode_batch(seed: int, H: int, KVH: int, D: int, ps: int, T: int, S: int, max_kv: int = 100):
    """A decode step: numpy qkv before RoPE, a paged batch, each new token's slot and position."""
    rng = np.random.default_rng(seed)
    seqs = [(1, int(rng.integers(1, max_kv))) if i == 0 or rng.random() < 0.8 else (0, 0) for i in range(S)]
    batch = testing.make_batch(rng, seqs, num_tokens=T, num_heads=H, num_kv_heads=KVH, head_dim=D, page_size=ps,
                               pages_per_seq=-(-max_kv // ps) + 1)
    slots, pos = np.full(T, -1, np.int32), np.zeros(T, np.int32)
    for s, (q_len, kv_len) in enumerate(seqs):
        if q_len:
            t, p = batch.query_start[s], kv_len - 1
            pos[t], page = p, batch.page_table[s, p // ps]
            slots[t] = page * ps + p % ps
            batch.k_pages[page, p % ps] = batch.v_pages[page, p % ps] = np.nan
    qkv = rng.standard_normal((T, H + 2 * KVH, D)).astype(np.float32)
    inv = (1.0 / (10000.0 ** (np.arange(0, D, 2) / D))).astype(np.float32)
    return batch, qkv, slots, pos, inv


@pytest.mark.parametrize("name", list(CASES))
def test_fused_decode_matches_rope_write_then_attention(name: str) -> None:
    H, KVH, D, ps, T, S, window, cfg, dtype = CASES[name]
    b, qkv, slots, pos, inv = _decode_batch(sorted(CASES).index(name), H, KVH, D, ps, T, S)
    x = jnp.asarray(qkv, dtype)
    k_pages, v_pages = jnp.asarray(b.k_pages, dtype), jnp.asarray(b.v_pages, dtype)
    layout = (jnp.asarray(b.query_start), jnp.asarray(b.kv_lens), jnp.asarray(b.page_table))
    q = apply_rope(x[:, :H], jnp.asarray(pos), jnp.asarray(inv))
    k = apply_rope(x[:, H:H + KVH], jnp.asarray(pos), jnp.asarray(inv))
    k_ref, v_ref = write_kv_ref(k_pages, v_pages, k, x[:, H + KVH:], jnp.asarray(slots))
    want = ragged_paged_attention_ref(q, k_ref, v_ref, *layout, sm_scale=D ** -0.5, sliding_window=window)

    out, k_got, v_got = fused_decode.rope_write_attention_pallas(
        x, jnp.asarray(inv), k_pages, v_pages, *layout, jnp.asarray(slots), sm_scale=D ** -0.5,
        sliding_window=window, config=cfg, interpret=True)

    real = np.arange(T) < b.query_start[-1]
    got = np.asarray(out, np.float32)[real]
    assert not np.isnan(got).any()
    tol = 2e-2 if dtype == jnp.bfloat16 else 2e-5
    np.testing.assert_allclose(got, np.asarray(want, np.float32)[real], rtol=tol, atol=tol)
    new = np.zeros(b.k_pages.shape[:2], bool).reshape(-1)
    new[slots[slots >= 0]] = True
    new = new.reshape(b.k_pages.shape[:2])
    for got_pages, want_pages in ((k_got, k_ref), (v_got, v_ref)):
        g, w = np.asarray(got_pages, np.float32), np.asarray(want_pages, np.float32)
        np.testing.assert_array_equal(g[~new], w[~new])  # every other slot untouched (NaN poison included)
        np.testing.assert_allclose(g[new], w[new], rtol=tol, atol=tol)  # the new K (rotated) and V written


def test_the_models_decode_step_gives_the_same_logits_and_cache_fused(monkeypatch, tiny_llama, spy,
                                                                     two_prompts) -> None:
    cfg = tiny_llama
    weights = random_weights(weight_specs(cfg, jnp.float32), seed=3, scale=0.2)
    a, b = two_prompts
    prefill = make_step_input([(a, 0, [5, 2]), (b, 0, [9])], 16, num_tokens=32, num_seqs=3)
    decode = make_step_input([(a[:1], 21, [5, 2]), (b[:1], 9, [9])], 16, num_tokens=4, num_seqs=3)
    traced = spy(fused_decode, "rope_write_attention_pallas")
    results = []
    for on in (False, True):
        monkeypatch.setattr(fused_decode, "FUSED_DECODE", on)
        traced.clear()
        kv = init_kv_cache(cfg, 16, 16, jnp.float32)
        _, kv = jax.jit(functools.partial(forward, cfg=cfg, attn_impl="reference"))(weights, kv, step_to_device(prefill))
        step = jax.jit(functools.partial(forward, cfg=cfg, attn_impl="pallas_interpret", hint=kernels.DECODE_HINT))
        logits, kv = step(weights, kv, step_to_device(decode))
        results.append((np.asarray(logits[:2]), kv, bool(traced)))  # traced once: the layer is a nested jit
    (want, kv_want, fused_off), (got, kv_got, fused_on) = results
    assert (fused_off, fused_on) == (False, True)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    for g, w in zip(kv_got.k + kv_got.v, kv_want.k + kv_want.v):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-5)


def test_where_the_fused_kernel_applies() -> None:
    assert kernels.fused_decode_applies("pallas_interpret", kernels.DECODE_HINT, enabled=True)
    assert not kernels.fused_decode_applies("pallas_interpret", kernels.DECODE_HINT, enabled=False)
    assert not kernels.fused_decode_applies("pallas_interpret", kernels.QLenHint(), enabled=True)
    assert not kernels.fused_decode_applies("pallas_interpret", kernels.PREFILL_HINT, enabled=True)
    assert not kernels.fused_decode_applies("reference", kernels.DECODE_HINT, enabled=True)
    with pytest.raises(ValueError, match="reference path is apply_rope"):
        kernels.rope_write_attention(*[None] * 8, sm_scale=1.0, impl="reference")


def test_a_bad_setting_is_refused_by_name(import_error) -> None:
    assert "JAXSGL_FUSED_DECODE='yes'" in import_error("JAXSGL_FUSED_DECODE", "yes")
