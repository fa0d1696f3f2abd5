"""The fused residual add + RMSNorm kernel (kernels/add_norm.py) against the model's own two steps
(x + delta, then forward.rms_norm), in interpret mode, and the model's step with it on vs off."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl import kernels
from jaxsgl.kernels import add_norm
from jaxsgl.model.forward import forward, init_kv_cache, rms_norm, step_to_device
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import random_weights, weight_specs


@pytest.mark.parametrize("tokens,hidden,dtype", [(1, 64, jnp.float32), (5, 96, jnp.float32), (33, 64, jnp.bfloat16),
                                                 (3, 576, jnp.bfloat16)])
def test_the_kernel_equals_add_then_rms_norm(tokens: int, hidden: int, dtype) -> None:
    rng = np.random.default_rng(hidden + tokens)
    x, d = (jnp.asarray(rng.standard_normal((tokens, hidden)) * 3, dtype) for _ in range(2))
    w = jnp.asarray(rng.standard_normal(hidden), dtype)
    got_sum, got_norm = add_norm.add_rms_norm_pallas(x, d, w, eps=1e-5, interpret=True)
    want_sum = x + d
    want_norm = rms_norm(want_sum, w, 1e-5)
    assert got_sum.dtype == got_norm.dtype == dtype
    np.testing.assert_array_equal(np.asarray(got_sum, np.float32), np.asarray(want_sum, np.float32))
    tol = 1e-2 if dtype == jnp.bfloat16 else 1e-6  # a bf16 product may round the other way
    np.testing.assert_allclose(np.asarray(got_norm, np.float32), np.asarray(want_norm, np.float32), rtol=tol, atol=tol)


def test_the_models_steps_give_the_same_logits_with_the_fused_add_norm(monkeypatch, tiny_llama, spy,
                                                                      two_prompts) -> None:
    cfg = tiny_llama
    weights = random_weights(weight_specs(cfg, jnp.float32), seed=5, scale=0.2)
    a, b = two_prompts
    steps = [make_step_input([(a, 0, [5, 2]), (b, 0, [9])], 16, num_tokens=32, num_seqs=3),
             make_step_input([(a[:1], 21, [5, 2]), (b[:4], 9, [9])], 16, num_tokens=8, num_seqs=3)]
    calls = spy(add_norm, "add_rms_norm_pallas")
    runs = []
    for on in (False, True):
        monkeypatch.setattr(add_norm, "FUSED_ADD_NORM", on)
        calls.clear()
        kv = init_kv_cache(cfg, 16, 16, jnp.float32)
        fwd = jax.jit(functools.partial(forward, cfg=cfg, attn_impl="pallas_interpret"))
        logits = []
        for step in steps:
            out, kv = fwd(weights, kv, step_to_device(step))
            logits.append(np.asarray(out[:2]))
        runs.append((logits, bool(calls)))
    (want, off_called), (got, on_called) = runs
    assert (off_called, on_called) == (False, True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_where_the_fused_add_norm_applies() -> None:
    assert kernels.fused_add_norm_applies("pallas_interpret", enabled=True)
    assert not kernels.fused_add_norm_applies("pallas_interpret", enabled=False)
    assert not kernels.fused_add_norm_applies("reference", enabled=True)
    with pytest.raises(ValueError, match="reference path is"):
        kernels.add_rms_norm(None, None, None, eps=1e-5, impl="reference")


def test_a_bad_setting_is_refused_by_name(import_error) -> None:
    assert "JAXSGL_FUSED_ADD_NORM='on'" in import_error("JAXSGL_FUSED_ADD_NORM", "on")
