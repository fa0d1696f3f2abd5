"""The model's jitted forward gives the same logits with the Pallas kernels as with the reference.

Runs the compiled kernels on an NVIDIA GPU and interpret mode elsewhere: a mixed step
(two prefills), then a step mixing decode and extend over the cached prefixes.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from jaxsgl import kernels
from jaxsgl.model.config import ModelConfig, RopeScaling
from jaxsgl.model.forward import init_kv_cache, make_forward, step_to_device
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import random_weights, weight_specs

PAGE = 16


def _config() -> ModelConfig:
    return ModelConfig(arch="llama", vocab_size=97, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                       rope_scaling=RopeScaling(), max_position_embeddings=512, tie_word_embeddings=True)


def _logits(cfg, weights, impl: str) -> list[np.ndarray]:
    kv = init_kv_cache(cfg, 16, PAGE, jnp.float32)
    fwd = make_forward(cfg, attn_impl=impl)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, cfg.vocab_size, 21).tolist(), rng.integers(0, cfg.vocab_size, 9).tolist()
    pa, pb = [5, 2], [9]
    steps = [make_step_input([(a, 0, pa), (b, 0, pb)], PAGE, num_tokens=32, num_seqs=3),
             make_step_input([(a[:1], 21, pa), (b[:4], 9, pb)], PAGE, num_tokens=8, num_seqs=3)]
    out = []
    for step in steps:
        logits, kv = fwd(weights, kv, step_to_device(step))
        out.append(np.asarray(logits[:2]))
    return out


def test_forward_pallas_matches_reference():
    cfg = _config()
    weights = random_weights(weight_specs(cfg, jnp.float32), seed=1, scale=0.2)
    impl = "pallas" if kernels.on_nvidia_gpu() else "pallas_interpret"
    for got, want in zip(_logits(cfg, weights, impl), _logits(cfg, weights, "reference")):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
