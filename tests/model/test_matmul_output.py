"""JAXSGL_MATMUL_OUTPUT=native (GEMMs write bf16 themselves) against the reference (f32 result, then convert)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsgl.model import forward as fwd
from jaxsgl.model.loader import load_model
from jaxsgl.model.step_input import make_step_input


def logits(monkeypatch, mode: str, cfg, weights, ids: list[int], dtype) -> np.ndarray:
    monkeypatch.setattr(fwd, "MATMUL_OUTPUT", mode)
    kv = fwd.init_kv_cache(cfg, 4, 16, dtype)
    step = make_step_input([(ids, 0, [1, 2, 3])], 16)
    out, _ = fwd.make_forward(cfg, all_logits=True)(weights, kv, fwd.step_to_device(step))
    return np.asarray(out, np.float32)


def test_native_matmul_output_matches_reference(monkeypatch, hf_checkpoint):
    ids = np.random.default_rng(0).integers(0, 1000, 40).tolist()
    cfg, w32, _ = load_model(hf_checkpoint("llama3-gqa2-rope-llama3"), dtype="float32")
    # fp32 activations: "native" asks for what the reference computes, bit for bit
    np.testing.assert_array_equal(logits(monkeypatch, "native", cfg, w32, ids, jnp.float32),
                                  logits(monkeypatch, "f32", cfg, w32, ids, jnp.float32))
    _, w16, _ = load_model(hf_checkpoint("llama3-gqa2-rope-llama3"), dtype="bfloat16")
    ref = logits(monkeypatch, "f32", cfg, w16, ids, jnp.bfloat16)
    got = logits(monkeypatch, "native", cfg, w16, ids, jnp.bfloat16)
    # bf16: at most rounding differences (an ulp of bf16 per GEMM), far below the logits' spread
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max()
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
