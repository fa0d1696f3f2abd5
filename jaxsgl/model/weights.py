"""The weights pytree and its one abstract description.

`weight_specs(cfg, dtype)` returns a `Weights` whose leaves are `ParamSpec`s: shape,
dtype, logical axes, init kind and the HF checkpoint tensors each weight is made
of. Random init, dummy init, loading and sharding all map over that one tree.

Layout: activations are [tokens, features] and every matrix is [in, out], so a
layer is `x @ w`. q/k/v are fused into `wqkv` and gate/up into `w_gate_up`
(one matmul each; loading concatenates the HF tensors along the output axis).
"""
from __future__ import annotations

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl.model.config import ModelConfig


@dataclass(frozen=True)
class ParamSpec:
    """Abstract description of one weight (a pytree leaf, never an array)."""

    shape: tuple[int, ...]
    dtype: Any
    axes: tuple[str | None, ...]  # logical axis names, for sharding
    hf_names: tuple[str, ...]  # checkpoint tensors, concatenated along the last axis
    transpose: bool = False  # HF nn.Linear stores [out, in]; we store [in, out]
    init: str = "normal"  # "normal" | "ones" | "zeros"


def _register(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    return jax.tree_util.register_dataclass(cls, data_fields=names, meta_fields=[])


@_register
@dataclass
class LayerWeights:
    attn_norm: Any
    wqkv: Any  # [d, (H + 2 KVH) * D]
    wo: Any  # [H * D, d]
    mlp_norm: Any
    w_gate_up: Any  # [d, 2 F]
    w_down: Any  # [F, d]
    bqkv: Any = None  # [(H + 2 KVH) * D]  (Qwen2, attention_bias)
    bo: Any = None  # [d]  (Llama attention_bias)
    q_norm: Any = None  # [D]  (Qwen3)
    k_norm: Any = None  # [D]  (Qwen3)


@_register
@dataclass
class Weights:
    embed: Any  # [V, d]
    layers: list[LayerWeights]
    final_norm: Any  # [d]
    lm_head: Any = None  # [d, V]; None when tied to embed


def weight_specs(cfg: ModelConfig, dtype: Any = jnp.bfloat16) -> Weights:
    """The abstract weights tree of `cfg` with every leaf a ParamSpec."""
    d, f, D = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    qkv = cfg.q_size + 2 * cfg.kv_size

    def spec(shape, axes, names, transpose=False, init="normal"):
        return ParamSpec(tuple(shape), dtype, tuple(axes), tuple(names), transpose, init)

    def layer(i: int) -> LayerWeights:
        p = f"model.layers.{i}."
        attn = [p + f"self_attn.{n}_proj" for n in "qkv"]
        return LayerWeights(
            attn_norm=spec([d], ["embed"], [p + "input_layernorm.weight"], init="ones"),
            wqkv=spec([d, qkv], ["embed", "qkv"], [n + ".weight" for n in attn], transpose=True),
            wo=spec([cfg.q_size, d], ["heads", "embed"], [p + "self_attn.o_proj.weight"], transpose=True),
            mlp_norm=spec([d], ["embed"], [p + "post_attention_layernorm.weight"], init="ones"),
            w_gate_up=spec([d, 2 * f], ["embed", "mlp"], [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"],
                           transpose=True),
            w_down=spec([f, d], ["mlp", "embed"], [p + "mlp.down_proj.weight"], transpose=True),
            bqkv=spec([qkv], ["qkv"], [n + ".bias" for n in attn], init="zeros") if cfg.qkv_bias else None,
            bo=spec([d], ["embed"], [p + "self_attn.o_proj.bias"], init="zeros") if cfg.o_bias else None,
            q_norm=spec([D], [None], [p + "self_attn.q_norm.weight"], init="ones") if cfg.qk_norm else None,
            k_norm=spec([D], [None], [p + "self_attn.k_norm.weight"], init="ones") if cfg.qk_norm else None,
        )

    return Weights(
        embed=spec([cfg.vocab_size, d], ["vocab", "embed"], ["model.embed_tokens.weight"]),
        layers=[layer(i) for i in range(cfg.num_layers)],
        final_norm=spec([d], ["embed"], ["model.norm.weight"], init="ones"),
        lm_head=None if cfg.tie_word_embeddings else spec([d, cfg.vocab_size], ["embed", "vocab"],
                                                          ["lm_head.weight"], transpose=True),
    )


def is_spec(x: Any) -> bool:
    return isinstance(x, ParamSpec)


def map_specs(fn: Callable[[ParamSpec], Any], specs: Weights) -> Weights:
    """Apply fn to every ParamSpec leaf, keeping the tree structure."""
    return jax.tree_util.tree_map(fn, specs, is_leaf=is_spec)


def abstract_weights(specs: Weights) -> Weights:
    """ShapeDtypeStructs for every weight (for jax.eval_shape / AOT compilation)."""
    return map_specs(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), specs)


def random_weights(specs: Weights, seed: int = 0, scale: float = 0.02) -> Weights:
    """Random weights of the right shapes, made on the default device (no files read). One small
    jitted generator per distinct (shape, dtype), called per leaf: a single jit over every leaf
    took ~37 s to compile for an 8B tree (CPU), this one compiles the ~10 distinct shapes in ~1 s.
    The first leaf of each distinct shape is made on a thread of its own (XLA compiles without the
    GIL: on the H200 the 8B tree's ~10 compiles one after another took 5-8 s)."""
    leaves, treedef = jax.tree_util.tree_flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))

    def make(i: int) -> jax.Array:
        s = leaves[i]
        if s.init in ("ones", "zeros"):
            return _filled(s.shape, np.dtype(s.dtype), int(s.init == "ones"))
        return _normal(keys[i], s.shape, np.dtype(s.dtype), scale)

    firsts: dict[tuple, int] = {}
    for i, s in enumerate(leaves):
        firsts.setdefault((s.init, tuple(s.shape), np.dtype(s.dtype)), i)
    out: list[jax.Array | None] = [None] * len(leaves)
    with ThreadPoolExecutor(max(1, min(len(firsts), os.cpu_count() or 1))) as pool:
        for i, arr in zip(firsts.values(), pool.map(make, firsts.values())):
            out[i] = arr
    return jax.tree_util.tree_unflatten(treedef, [a if a is not None else make(i) for i, a in enumerate(out)])


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _normal(key: jax.Array, shape: tuple[int, ...], dtype: Any, scale: float) -> jax.Array:
    return (scale * jax.random.normal(key, shape, jnp.float32)).astype(dtype)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _filled(shape: tuple[int, ...], dtype: Any, value: int) -> jax.Array:
    return jnp.full(shape, value, dtype)


def param_count(specs: Weights) -> int:
    return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(specs, is_leaf=is_spec))
