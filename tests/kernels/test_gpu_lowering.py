"""The Pallas kernels lower for a CUDA GPU (Triton IR; Mosaic GPU for the Hopper extend kernel), checked
on the CPU.

Interpret mode (the other kernel tests) runs the kernels' jaxprs, not their GPU lowering: a primitive
Pallas' Triton or Mosaic backend cannot lower, or a block shape it refuses, shows only on a GPU. Here each
kernel, at the 8B model's shapes, is lowered for the "cuda" platform from this CPU machine, for an
abstract H100 where the jax version asks for the device's kind (0.12). Compiling the result (PTX, the
Mosaic pipeline) is left to the device."""
from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import pytest

import jax._src.pallas.mosaic_gpu.pallas_call_registration  # noqa: F401  (the "cuda" lowerings of pallas_call)
import jax._src.pallas.triton.pallas_call_registration  # noqa: F401
from jaxsgl.kernels import add_norm, fused_decode
from jaxsgl.kernels.paged_extend_mosaic import MosaicConfig
from jaxsgl.kernels.ragged_paged_attention import BlockConfig, ragged_paged_attention_pallas

T, H, KVH, D, PAGE, PAGES, S, P = 64, 32, 8, 128, 16, 512, 64, 33
BF16 = jnp.bfloat16


def _i32(*shape):
    return jax.ShapeDtypeStruct(shape, jnp.int32)


def _hopper_target():
    """A context naming an abstract H100 as the target: newer jax asks the device for its kind while
    lowering (jax 0.12); where it does not take one (0.10), lowering needs none."""
    try:
        from jax._src import mesh as mesh_lib
        device = mesh_lib.AbstractDevice(device_kind="NVIDIA H100 80GB HBM3", num_cores=None, platform="cuda")
        return jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((1,), ("x",), abstract_device=device))
    except (AttributeError, TypeError):
        return contextlib.nullcontext()


def _lower_for_cuda(fn, *specs) -> str:
    with _hopper_target():
        return jax.jit(fn).trace(*specs).lower(lowering_platforms=("cuda",)).as_text()


PAGES_SPEC = jax.ShapeDtypeStruct((PAGES, PAGE, KVH, D), BF16)
LAYOUT = (_i32(S + 1), _i32(S), _i32(S, P))


@pytest.mark.parametrize("config,window", [(None, None), (BlockConfig(16, 64, 4, num_stages=3), None),
                                           (BlockConfig(16, 32, 2), 256)])
def test_the_fused_decode_kernel_lowers_to_triton(config, window) -> None:
    fn = functools.partial(fused_decode.rope_write_attention_pallas, sm_scale=D ** -0.5, sliding_window=window,
                           config=config)
    text = _lower_for_cuda(fn, jax.ShapeDtypeStruct((T, H + 2 * KVH, D), BF16),
                           jax.ShapeDtypeStruct((D // 2,), jnp.float32), PAGES_SPEC, PAGES_SPEC, *LAYOUT, _i32(T))
    assert "ragged_paged_attention_fused" in text and "xla.gpu.triton" in text


@pytest.mark.parametrize("hidden", [4096, 576])
def test_the_add_norm_kernel_lowers_to_triton(hidden: int) -> None:
    spec = jax.ShapeDtypeStruct((T, hidden), BF16)
    text = _lower_for_cuda(functools.partial(add_norm.add_rms_norm_pallas, eps=1e-5), spec, spec,
                           jax.ShapeDtypeStruct((hidden,), BF16))
    assert "add_rms_norm" in text and "xla.gpu.triton" in text


@pytest.mark.parametrize("max_q_len", [1, None])
def test_the_attention_kernels_lower_to_triton(max_q_len) -> None:
    fn = functools.partial(ragged_paged_attention_pallas, sm_scale=D ** -0.5, max_q_len=max_q_len, use_mosaic=False)
    text = _lower_for_cuda(fn, jax.ShapeDtypeStruct((T, H, D), BF16), PAGES_SPEC, PAGES_SPEC, *LAYOUT)
    assert text.count("xla.gpu.triton") >= (1 if max_q_len == 1 else 2)


def test_the_batch_invariant_class_lowers_to_triton_alone() -> None:
    """--enable-deterministic-inference: one Triton launch (one class, one masked loop) even where the
    Hopper path would take the Mosaic kernel for a prefill."""
    fn = functools.partial(ragged_paged_attention_pallas, sm_scale=D ** -0.5, batch_invariant=True)
    text = _lower_for_cuda(fn, jax.ShapeDtypeStruct((512, H, D), BF16), PAGES_SPEC, PAGES_SPEC, *LAYOUT)
    assert text.count("xla.gpu.triton") == 1 and "mosaic_gpu" not in text


def test_the_hopper_extend_kernel_lowers_with_mosaic_gpu() -> None:
    """A prefill batch's long class on the Mosaic GPU kernel (paged_extend_mosaic.py), the short one on Triton."""
    fn = functools.partial(ragged_paged_attention_pallas, sm_scale=D ** -0.5, long_config=MosaicConfig())
    text = _lower_for_cuda(fn, jax.ShapeDtypeStruct((512, H, D), BF16), PAGES_SPEC, PAGES_SPEC, _i32(5), _i32(4),
                           _i32(4, P))
    assert "mosaic_gpu" in text and "xla.gpu.triton" in text
