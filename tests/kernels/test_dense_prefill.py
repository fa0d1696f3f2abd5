"""The dense-prefill path (cuDNN on GPU; XLA's implementation here) against the paged reference."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl import kernels
from jaxsgl.kernels import dense_prefill
from jaxsgl.kernels.reference import ragged_paged_attention_ref
from jaxsgl.model.step_input import make_step_input

PS, KVH, H, D = 16, 2, 8, 64


def setup(seqs, dtype, seed=0):
    """Random pages with NaN poison everywhere the sequences do not own; a StepInput for seqs."""
    rng = np.random.default_rng(seed)
    step = make_step_input(seqs, PS, num_tokens=64, num_seqs=4, pages_per_seq=6)
    k = np.full((24, PS, KVH, D), np.nan, np.float32)
    v = np.full((24, PS, KVH, D), np.nan, np.float32)
    for s in range(len(seqs)):
        n = int(step.kv_lens[s])
        for j in range(n):
            page, off = step.page_table[s, j // PS], j % PS
            k[page, off], v[page, off] = rng.normal(size=(2, KVH, D))
    q = rng.normal(size=(64, H, D)).astype(np.float32)
    arrs = [jnp.asarray(x, dtype) for x in (q, k, v)]
    return arrs + [jnp.asarray(getattr(step, f)) for f in ("query_start", "kv_lens", "page_table")]


TOL = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dense_prefill_equals_paged_reference(dtype):
    args = setup([(list(range(45)), 0, [3, 7, 11])], dtype)
    want = ragged_paged_attention_ref(*args, sm_scale=D ** -0.5)
    with jax.default_matmul_precision("highest"):  # GPUs default fp32 dots to TF32; the reference does not
        got = jax.jit(lambda *a: dense_prefill.dense_prefill_attention(*a, sm_scale=D ** -0.5,
                                                                       implementation="xla"))(*args)
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), atol=TOL[dtype], rtol=0)
    assert not np.any(np.asarray(got[45:], np.float32))  # padding rows are zeros


@pytest.mark.parametrize("seqs,fresh", [
    ([(list(range(40)), 0, [2, 5, 9])], True),                        # one fresh prefill: dense branch
    ([(list(range(20)), 16, [2, 5, 9])], False),                      # cached prefix: paged branch
    ([(list(range(20)), 0, [2, 5]), (list(range(9)), 0, [12])], False),  # two sequences: paged branch
])
def test_with_dense_prefill_picks_the_right_branch(seqs, fresh, monkeypatch):
    monkeypatch.setattr(dense_prefill, "DENSE_PREFILL_MIN_TOKENS", 16)
    args = setup(seqs, jnp.float32, seed=1)
    assert bool(dense_prefill.is_single_fresh_prefill(args[3], args[4])) == fresh
    attn = dense_prefill.with_dense_prefill(ragged_paged_attention_ref, implementation="xla")
    with jax.default_matmul_precision("highest"):
        got = jax.jit(lambda *a: attn(*a, sm_scale=0.125))(*args)
    want = ragged_paged_attention_ref(*args, sm_scale=0.125)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-5, rtol=0)


def test_pallas_cudnn_needs_a_gpu():
    if kernels.on_nvidia_gpu():
        pytest.skip("runs only where there is no NVIDIA GPU")
    with pytest.raises(ValueError, match="NVIDIA GPU"):
        kernels.resolve_impl("pallas_cudnn")
    assert kernels.resolve_impl("auto") == "reference"


@pytest.mark.parametrize("hopper, want", [(True, "pallas"), (False, "pallas_cudnn")])
def test_auto_uses_the_dense_path_only_off_hopper(monkeypatch, hopper, want):
    """On Hopper the Mosaic extend kernel beats the dense path end to end (docs/perf.md)."""
    monkeypatch.setattr(kernels, "on_nvidia_gpu", lambda: True)
    monkeypatch.setattr(kernels, "on_hopper", lambda: hopper)
    assert kernels.resolve_impl("auto") == want


@pytest.mark.parametrize("impl, mosaic", [("pallas", True), ("pallas_cudnn", True), ("pallas_triton", False)])
def test_pallas_triton_keeps_hopper_extends_off_mosaic(monkeypatch, impl, mosaic):
    """"pallas_triton" is the A100's path measured on Hopper: the paged kernel without the Mosaic class."""
    seen = {}

    def fake_kernel(*args, **kw):
        seen.update(kw)
        return args[0]

    monkeypatch.setattr(kernels, "on_nvidia_gpu", lambda: True)
    monkeypatch.setattr(kernels, "ragged_paged_attention_pallas", fake_kernel)
    q = jnp.zeros((4, 2, 8), jnp.float32)
    pages = jnp.zeros((2, 4, 1, 8), jnp.float32)
    kernels.ragged_paged_attention(q, pages, pages, jnp.array([0, 4]), jnp.array([4]), jnp.zeros((1, 1), jnp.int32),
                                   sm_scale=1.0, impl=impl, hint=kernels.DECODE_HINT)
    assert seen["use_mosaic"] is mosaic and seen["interpret"] is False
