"""The residual add and the RMSNorm that reads it, in one kernel launch.

    add_rms_norm_pallas(x, delta, w, eps) -> (x + delta, rms_norm(x + delta) * w)

A layer adds its attention output and its MLP output to the residual stream, and each sum is
normalised at once (the next sub-layer's input). XLA runs each pair as two kernels (a loop fusion
and a normalisation fusion: ~1.9 + 1.8 us on an H200 at batch 1, 64 pairs an 8B step, ~5% of it).
This Triton kernel reads x and delta once and writes both the sum and the normalised row.

Numerics are the model's (`forward.rms_norm`): the sum rounded to x's dtype, the norm in float32,
the scale by w in x's dtype. Opt-in, $JAXSGL_FUSED_ADD_NORM=1 (part of the executable cache's key): on
the H200 (session 20, docs/perf.md) it took as long as the XLA fusions it replaces (~2.2 us a launch),
so the step was no faster; its greedy tokens part from the default's on every row of the 8B dummy model
(XLA's own fusion may keep the sum in f32: excess precision). The model uses it on a Pallas attention impl
only (`kernels.fused_add_norm_applies`). Tests: tests/kernels/test_add_norm.py.
"""
from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_SETTING = os.environ.get("JAXSGL_FUSED_ADD_NORM", "0")
if _SETTING not in ("0", "1"):
    raise ValueError(f"JAXSGL_FUSED_ADD_NORM={_SETTING!r}: expected '0' or '1'")
FUSED_ADD_NORM = _SETTING == "1"


def _kernel(x_ref, d_ref, w_ref, sum_ref, norm_ref, *, rows: int, width: int, eps: float):
    """Rows [program * rows, + rows) of x + delta, and their RMSNorm scaled by w."""
    T, hidden = x_ref.shape
    r = pl.program_id(0) * rows + jnp.arange(rows, dtype=jnp.int32)[:, None]
    c = jnp.arange(width, dtype=jnp.int32)[None, :]
    mask = (r < T) & (c < hidden)
    x = plgpu.load(x_ref.at[r, c], mask=mask, other=0)
    d = plgpu.load(d_ref.at[r, c], mask=mask, other=0)
    s = (x.astype(jnp.float32) + d.astype(jnp.float32)).astype(sum_ref.dtype)
    plgpu.store(sum_ref.at[r, c], s, mask=mask)
    sf = s.astype(jnp.float32)
    inv_rms = lax.rsqrt(jnp.sum(sf * sf, axis=1) / hidden + eps)
    w = plgpu.load(w_ref.at[c], mask=c < hidden, other=0)
    plgpu.store(norm_ref.at[r, c], w * (sf * inv_rms[:, None]).astype(sum_ref.dtype), mask=mask)


@functools.partial(jax.jit, static_argnames=("eps", "interpret"))
def add_rms_norm_pallas(x: jax.Array, delta: jax.Array, w: jax.Array, *, eps: float,
                        interpret: bool = False) -> tuple[jax.Array, jax.Array]:
    """(x + delta, RMSNorm(x + delta) * w) for x, delta [T, hidden] and w [hidden]: one launch,
    a program per row."""
    if x.ndim != 2 or delta.shape != x.shape or w.shape != x.shape[1:]:
        raise ValueError(f"x {x.shape}, delta {delta.shape}, w {w.shape}: expected [T, hidden] twice and [hidden]")
    if delta.dtype != x.dtype or w.dtype != x.dtype:
        raise ValueError(f"dtypes differ: x {x.dtype}, delta {delta.dtype}, w {w.dtype}")
    T, hidden = x.shape
    width = 1 << max(0, (hidden - 1).bit_length())  # Triton blocks are powers of 2: lanes past hidden masked
    rows = 1
    return pl.pallas_call(
        functools.partial(_kernel, rows=rows, width=width, eps=eps),
        grid=(pl.cdiv(T, rows),),
        out_shape=(jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype)),
        compiler_params=plgpu.CompilerParams(num_warps=4 if width <= 4096 else 8, num_stages=1),
        interpret=interpret,
        name="add_rms_norm",
    )(x, delta, w)
