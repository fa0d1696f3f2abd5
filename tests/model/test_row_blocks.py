"""Batch-invariant row-wise work (forward's batch_invariant, --enable-deterministic-inference): the layers'
norms and GEMMs run on fixed blocks of INVARIANT_ROWS tokens, so every GEMM has one shape whatever the step's
size, and a sequence's logits are bit-identical alone or in a crowd."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.model import forward as fwd
from jaxsgl.model.loader import load_model
from jaxsgl.model.step_input import make_step_input

PAGE = 16


@pytest.mark.parametrize("T", [1, 4, 5, 13])
def test_row_blocks_only_shows_fn_fixed_rows(T: int) -> None:
    seen: list[tuple] = []

    def fn(x, y):
        seen.append((x.shape, y.shape))
        return x * jnp.sum(y, axis=(1, 2))[:, None], y[:, 0]

    rng = np.random.default_rng(T)
    x, y = jnp.asarray(rng.normal(size=(T, 3)), jnp.float32), jnp.asarray(rng.normal(size=(T, 2, 5)), jnp.float32)
    got = jax.jit(lambda x, y: fwd.row_blocks(fn, 4, x, y))(x, y)
    assert seen and all(shapes == ((4, 3), (4, 2, 5)) for shapes in seen)
    want = (x * jnp.sum(y, axis=(1, 2))[:, None], y[:, 0])
    assert [g.shape for g in got] == [(T, 3), (T, 5)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-6)


def _logits(cfg, weights, seqs, invariant: bool, num_tokens: int) -> np.ndarray:
    kv = fwd.init_kv_cache(cfg, 16, PAGE, jnp.float32)
    step = make_step_input(seqs, PAGE, num_tokens=num_tokens, num_seqs=4, pages_per_seq=4)
    run = jax.jit(lambda w, kv, s: fwd.forward(w, kv, s, cfg=cfg, batch_invariant=invariant))
    logits, _ = run(weights, kv, fwd.step_to_device(step))
    return np.asarray(logits)


@pytest.mark.parametrize("arch", ["llama3-gqa2-rope-llama3", "qwen3-gqa4-qknorm"])
def test_invariant_forward_matches_default_and_ignores_the_crowd(arch, hf_checkpoint, monkeypatch) -> None:
    monkeypatch.setattr(fwd, "INVARIANT_ROWS", 8)  # several blocks in a small step
    cfg, weights, _ = load_model(hf_checkpoint(arch), dtype="float32")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, cfg.vocab_size, 27).tolist(), rng.integers(0, cfg.vocab_size, 6).tolist()
    crowd = [(a, 0, [1, 2]), (b, 0, [5])]
    default = _logits(cfg, weights, crowd, False, 40)
    invariant = _logits(cfg, weights, crowd, True, 40)
    np.testing.assert_allclose(invariant, default, atol=1e-4, rtol=0)
    # b alone, in a step of another size: bit for bit the row it got beside a
    alone = _logits(cfg, weights, [(b, 0, [5])], True, 8)
    np.testing.assert_array_equal(alone[0], invariant[1])
