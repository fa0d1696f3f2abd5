"""One-shot prefill == chunked prefill (page-aligned and not) followed by decode."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.model.forward import init_kv_cache, make_forward, step_to_device
from jaxsgl.model.loader import load_model
from jaxsgl.model.step_input import make_step_input

PAGE = 16


def run_schedule(cfg, weights, ids: list[int], chunks: list[int], decode: list[int]) -> list[np.ndarray]:
    """Prefill ids in the given chunk sizes, then decode `decode`; logits after the prefill and each decode."""
    total = len(ids) + len(decode)
    pages = list(range(3, 3 + -(-total // PAGE)))  # not starting at 0: page ids are really indirect
    kv = init_kv_cache(cfg, pages[-1] + 2, PAGE, jnp.float32)
    kv.k[0] = kv.k[0].at[pages[-1] + 1].set(jnp.nan)  # poison an unused page: reading it would spread NaN
    fwd = make_forward(cfg)
    out, pos = [], 0
    for c in chunks:
        step = make_step_input([(ids[pos:pos + c], pos, pages)], PAGE, num_tokens=64)
        logits, kv = fwd(weights, kv, step_to_device(step))
        pos += c
    out.append(np.asarray(logits[0]))
    for tok in decode:
        step = make_step_input([([tok], pos, pages)], PAGE, num_tokens=8)
        logits, kv = fwd(weights, kv, step_to_device(step))
        pos += 1
        out.append(np.asarray(logits[0]))
    return out


@pytest.mark.parametrize("chunks", [[16, 16, 16, 2], [5, 7, 13, 25], [1, 49]])
def test_chunked_prefill_equals_one_shot(chunks, hf_checkpoint):
    cfg, weights, _ = load_model(hf_checkpoint("llama3-gqa2-rope-llama3"), dtype="float32")
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, 50).tolist()
    decode = rng.integers(0, cfg.vocab_size, 6).tolist()
    ref = run_schedule(cfg, weights, ids, [50], decode)
    got = run_schedule(cfg, weights, ids, chunks, decode)
    for a, b in zip(ref, got):
        assert np.all(np.isfinite(b))
        np.testing.assert_allclose(b, a, atol=1e-4, rtol=0)


def test_mixed_ragged_batch_equals_separate_sequences(hf_checkpoint):
    """A packed batch (prefill + decode + padding) gives each sequence the logits it gets alone."""
    cfg, weights, _ = load_model(hf_checkpoint("qwen2-gqa2-bias"), dtype="float32")
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, cfg.vocab_size, 20).tolist(), rng.integers(0, cfg.vocab_size, 9).tolist()
    alone_a = run_schedule(cfg, weights, a, [20], [])[0]
    alone_b = run_schedule(cfg, weights, b, [9], [])[0]
    # b's first 8 tokens are cached by a first step; then one batch: a's full prefill + b's last token.
    kv = init_kv_cache(cfg, 8, PAGE, jnp.float32)
    fwd = make_forward(cfg)
    _, kv = fwd(weights, kv, step_to_device(make_step_input([(b[:8], 0, [5])], PAGE, num_tokens=32, num_seqs=4)))
    step = make_step_input([(a, 0, [1, 2]), (b[8:], 8, [5])], PAGE, num_tokens=32, num_seqs=4, pages_per_seq=3)
    logits, _ = fwd(weights, kv, step_to_device(step))
    np.testing.assert_allclose(np.asarray(logits[0]), alone_a, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(logits[1]), alone_b, atol=1e-4, rtol=0)


def test_nested_layer_jit_equals_the_plain_layers(hf_checkpoint, monkeypatch):
    """forward's per-layer nested jit (traced once, inlined by XLA) against the plain Python layer:
    the same logits and KV, bit for bit, over a prefill then decodes."""
    from jaxsgl.model import forward as fw

    cfg, weights, _ = load_model(hf_checkpoint("llama3-gqa2-rope-llama3"), dtype="float32")
    ids = np.random.default_rng(2).integers(0, cfg.vocab_size, 24).tolist()
    nested = run_schedule(cfg, weights, ids, [24], [5, 9, 11])
    monkeypatch.setattr(fw, "_layer_jit", fw._layer)
    plain = run_schedule(cfg, weights, ids, [24], [5, 9, 11])
    for a, b in zip(nested, plain):
        np.testing.assert_array_equal(a, b)
