"""The reference attention's memory: its per-block loop writes into a buffer made from its layer's K pages,
so a step's layers do not each hold their output buffer from the start of the step (lax.map's constant-
initialised buffers did: XLA created every layer's at once)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsgl.kernels.reference import ragged_paged_attention_ref

T, H, KVH, D, PAGE = 2048, 4, 2, 64, 16


def _temp_bytes(layers: int) -> int:
    attend = functools.partial(ragged_paged_attention_ref, sm_scale=D ** -0.5)

    def step(q, k, v, query_start, kv_lens, table):
        for _ in range(layers):  # chained like a model's layers, each writing its token's K in place first
            k = k.at[0, 0].set(q[0, :KVH].astype(k.dtype))
            q = attend(q * 1.5, k, v, query_start, kv_lens, table)
        return q

    pages = T // PAGE
    spec = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
    args = (jax.ShapeDtypeStruct((T, H, D), jnp.bfloat16), jax.ShapeDtypeStruct((pages, PAGE, KVH, D), jnp.bfloat16),
            jax.ShapeDtypeStruct((pages, PAGE, KVH, D), jnp.bfloat16), spec(2), spec(1), spec(1, pages))
    return jax.jit(step).lower(*args).compile().memory_analysis().temp_size_in_bytes


def test_a_layer_adds_less_than_its_output_to_the_temp_memory() -> None:
    out_bytes = T * H * D * 4  # one layer's f32 output
    per_layer = (_temp_bytes(8) - _temp_bytes(2)) / 6
    assert per_layer < 0.5 * out_bytes, (per_layer, out_bytes)
