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


def test_invariant_step_holds_no_more_activations_than_the_default(tmp_path) -> None:
    """Row blocks write into buffers made per layer: with lax.map's constant-initialised output buffers
    XLA created every layer's at the start of the step (9.1 GB for an 8B prefill of 8192 tokens, which
    ran the engine out of memory)."""
    import json

    cfg_json = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=512, hidden_size=256,
                    intermediate_size=1024, num_hidden_layers=12, num_attention_heads=4, num_key_value_heads=2,
                    rms_norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg_json))
    cfg, weights, _ = load_model(str(tmp_path), load_format="dummy", dtype="bfloat16")
    T = 2048
    kv = jax.eval_shape(lambda: fwd.init_kv_cache(cfg, T // PAGE + 2, PAGE, jnp.bfloat16))
    step = fwd.step_to_device(make_step_input([([1] * T, 0, list(range(1, T // PAGE + 1)))], PAGE, num_seqs=4))
    temp = {}
    for invariant in (False, True):
        run = jax.jit(lambda w, kv, s: fwd.forward(w, kv, s, cfg=cfg, batch_invariant=invariant), donate_argnums=(1,))
        temp[invariant] = run.lower(weights, kv, step).compile().memory_analysis().temp_size_in_bytes
    assert temp[True] <= 1.2 * temp[False], temp
