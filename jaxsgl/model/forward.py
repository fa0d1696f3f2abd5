"""The forward pass: one pure function over a packed ragged batch with paged KV.

    forward(weights, kv, step, cfg=..., attn_impl=...) -> (logits, kv)

`kv` is donated by `make_forward`'s jitted wrapper, so XLA writes the new tokens'
K/V into the cache in place. Layers are unrolled (a Python loop): on GPU that
streams weights faster than `lax.scan`, which copies each layer's slice. Each layer
is a nested jit (`_layer_jit`), so it is traced once per step shape; XLA inlines it.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from jaxsgl import kernels
from jaxsgl.model.config import ModelConfig
from jaxsgl.model.step_input import StepInput, step_input_fields
from jaxsgl.model.weights import LayerWeights, Weights

jax.tree_util.register_dataclass(StepInput, data_fields=step_input_fields(), meta_fields=[])


@functools.partial(jax.tree_util.register_dataclass, data_fields=["k", "v"], meta_fields=[])
@dataclass
class KVCache:
    """Paged KV: per layer, k[i] and v[i] are [num_pages, page_size, num_kv_heads, head_dim]."""

    k: list[jax.Array]
    v: list[jax.Array]

    @property
    def num_pages(self) -> int:
        return int(self.k[0].shape[0])

    @property
    def page_size(self) -> int:
        return int(self.k[0].shape[1])


def init_kv_cache(cfg: ModelConfig, num_pages: int, page_size: int, dtype: Any = jnp.bfloat16,
                  device: Any = None) -> KVCache:
    """Zeroed KV pages for every layer (committed to `device` when given)."""
    shape = (num_pages, page_size, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(k=[jnp.zeros(shape, dtype, device=device) for _ in range(cfg.num_layers)],
                   v=[jnp.zeros(shape, dtype, device=device) for _ in range(cfg.num_layers)])


def kv_bytes_per_token(cfg: ModelConfig, dtype: Any = jnp.bfloat16) -> int:
    return 2 * cfg.num_layers * cfg.kv_size * jnp.dtype(dtype).itemsize


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in fp32, returned in x's dtype (as HF Llama does)."""
    xf = x.astype(jnp.float32)
    xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * xf.astype(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> jax.Array:
    """Per-pair inverse frequencies [D/2], with llama3 / linear scaling applied."""
    D = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, D, 2, dtype=jnp.float32) / D))
    rs = cfg.rope_scaling
    if rs.rope_type == "linear":
        inv = inv / rs.factor
    elif rs.rope_type == "llama3":
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        wavelen = 2 * jnp.pi / inv
        smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
            rs.high_freq_factor - rs.low_freq_factor)
        scaled = jnp.where(wavelen > low_wavelen, inv / rs.factor, inv)
        mid = (1 - smooth) * inv / rs.factor + smooth * inv
        is_mid = (wavelen <= low_wavelen) & (wavelen >= high_wavelen)
        inv = jnp.where(is_mid, mid, scaled)
    return inv


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate-half RoPE (HF convention). x: [T, heads, D]; positions: [T]."""
    ang = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # [T, D/2]
    cos = jnp.concatenate([jnp.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = jnp.concatenate([jnp.sin(ang)] * 2, axis=-1)[:, None, :]
    xf = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
    return (xf * cos + rotated * sin).astype(x.dtype)


# How a layer's GEMMs emit their result. "f32" (the reference): an f32 result converted to the activations'
# dtype, which on the GPU is a separate convert kernel per GEMM (0.41 ms of an 8B batch-256 step on the
# H200). "native": the GEMM writes the activations' dtype itself (f32 accumulation inside cuBLAS either
# way; bf16 outputs may differ by rounding, tests/model/test_matmul_output.py). $JAXSGL_MATMUL_OUTPUT
# chooses; by default the GPU takes "native" (-3.8% step time at batch 256) and the CPU the reference.
MATMUL_OUTPUT = os.environ.get("JAXSGL_MATMUL_OUTPUT")
if MATMUL_OUTPUT not in (None, "f32", "native"):
    raise ValueError(f"JAXSGL_MATMUL_OUTPUT={MATMUL_OUTPUT!r}: expected 'f32' or 'native'")


def matmul_output() -> str:
    """The GEMM output mode of the steps traced now (MATMUL_OUTPUT, else by backend)."""
    return MATMUL_OUTPUT or ("native" if jax.default_backend() == "gpu" else "f32")


def _matmul(x: jax.Array, w: jax.Array, output: str = "f32") -> jax.Array:
    if output == "native":
        return jnp.dot(x, w, preferred_element_type=x.dtype)
    return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _add_norm(x: jax.Array, delta: jax.Array, w: jax.Array, eps: float, impl: str,
              fused: bool) -> tuple[jax.Array, jax.Array]:
    """(x + delta, rms_norm(x + delta)): the residual stream and the next sub-layer's input;
    one kernel when fused (kernels.add_rms_norm)."""
    if fused:
        return kernels.add_rms_norm(x, delta, w, eps=eps, impl=impl)
    x = x + delta
    return x, rms_norm(x, w, eps)


# Under batch_invariant (--enable-deterministic-inference) a layer's row-wise work (residual adds, norms,
# GEMMs, the MLP's activation) runs on fixed blocks of INVARIANT_ROWS tokens, one after another, so every
# GEMM and reduction has one shape whatever the step's size: XLA tiles it one way, and a row's sums cannot
# follow its batch (on a GPU they do otherwise: a cached prefix changes a prefill's M, and the GEMM's
# kernel with it; docs/perf.md session 22). A block's padding rows are computed too. On a GPU, 128 rows
# keep an 8B decode GEMM memory-bound (2 x 128 FLOPs a weight byte pair, under the H200's ~184 FLOPs/byte):
# batches up to 128 read the weights once, 256 twice. On the 2-core CPU (the default model) 8, 16, 32 and
# 128 rows cost the same at batch 1 and 128 is the fastest prefill (docs/perf.md, session 22).
INVARIANT_ROWS = 128


def row_blocks(fn, rows: int, *xs: jax.Array):
    """fn(*blocks) over consecutive blocks of `rows` leading rows of every xs (the last zero-padded),
    outputs concatenated and cut back to xs' row count: fn only ever sees operands of `rows` rows.

    A loop, one block an iteration, writing into output buffers made from the input: buffers of
    constants (what lax.map starts from) depend on nothing, so XLA creates every layer's at the start
    of the step, in one fused kernel, and an 8B prefill of 8192 tokens held 9.1 GB of them at once."""
    T = xs[0].shape[0]
    n = -(-T // rows)
    padded = [jnp.pad(x, [(0, n * rows - T)] + [(0, 0)] * (x.ndim - 1)) for x in xs]
    out_shapes = jax.eval_shape(fn, *[jax.ShapeDtypeStruct((rows, *x.shape[1:]), x.dtype) for x in xs])
    zero = padded[0].reshape(-1)[0] * 0  # NaN for a NaN input: every row is overwritten below
    bufs = jax.tree.map(lambda o: jnp.full((n * rows, *o.shape[1:]), zero, o.dtype), out_shapes)

    def body(i, bufs):
        out = fn(*[jax.lax.dynamic_slice_in_dim(x, i * rows, rows) for x in padded])
        return jax.tree.map(lambda b, o: jax.lax.dynamic_update_slice_in_dim(b, o, i * rows, 0), bufs, out)

    return jax.tree.map(lambda y: y[:T], jax.lax.fori_loop(0, n, body, bufs))


def _qkv_in(lw: LayerWeights, x: jax.Array, delta: jax.Array, cfg: ModelConfig, impl: str, mm: str,
            fused_norm: bool) -> tuple[jax.Array, jax.Array]:
    """(x + delta, the QKV projection of its norm): the attention's row-wise inputs."""
    x, h = _add_norm(x, delta, lw.attn_norm, cfg.rms_norm_eps, impl, fused_norm)
    qkv = _matmul(h, lw.wqkv, mm)
    return x, (qkv if lw.bqkv is None else qkv + lw.bqkv)


def _mlp_out(lw: LayerWeights, x: jax.Array, attn: jax.Array, cfg: ModelConfig, impl: str, mm: str,
             fused_norm: bool) -> tuple[jax.Array, jax.Array]:
    """(x + the attention's output projection, the MLP's output on its norm, not yet added)."""
    out = _matmul(attn, lw.wo, mm)
    if lw.bo is not None:
        out = out + lw.bo
    x, h = _add_norm(x, out, lw.mlp_norm, cfg.rms_norm_eps, impl, fused_norm)
    gate, up = jnp.split(_matmul(h, lw.w_gate_up, mm), 2, axis=-1)
    return x, _matmul(jax.nn.silu(gate) * up, lw.w_down, mm)


def _layer(lw: LayerWeights, x: jax.Array, delta: jax.Array, k_pages: jax.Array, v_pages: jax.Array,
           step: StepInput, inv_freq: jax.Array, cfg: ModelConfig, attn_impl: str, hint: kernels.QLenHint,
           mm: str = "f32", fused: bool = False, fused_norm: bool = False, invariant: bool = False):
    """One decoder layer on the residual stream x + delta (delta: the previous layer's MLP output, not
    yet added; zeros before the first layer, so every layer is one trace). Returns (x, this layer's MLP
    output, k_pages, v_pages). invariant: row-wise work in INVARIANT_ROWS blocks, batch-invariant attention."""
    T = x.shape[0]
    H, KVH, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rowwise = (lambda fn, *xs: row_blocks(fn, INVARIANT_ROWS, *xs)) if invariant else (lambda fn, *xs: fn(*xs))
    x, qkv = rowwise(lambda x, d: _qkv_in(lw, x, d, cfg, attn_impl, mm, fused_norm), x, delta)
    if fused and lw.q_norm is None:  # decode: RoPE, KV write and attention in one kernel
        attn, k_pages, v_pages = kernels.rope_write_attention(
            qkv.reshape(T, H + 2 * KVH, D), inv_freq, k_pages, v_pages, step.query_start, step.kv_lens,
            step.page_table, step.slots, sm_scale=D ** -0.5, sliding_window=cfg.sliding_window, impl=attn_impl)
    else:
        q = qkv[:, :cfg.q_size].reshape(T, H, D)
        k = qkv[:, cfg.q_size:cfg.q_size + cfg.kv_size].reshape(T, KVH, D)
        v = qkv[:, cfg.q_size + cfg.kv_size:].reshape(T, KVH, D)
        if lw.q_norm is not None:
            q, k = rowwise(lambda q, k: (rms_norm(q, lw.q_norm, cfg.rms_norm_eps),
                                         rms_norm(k, lw.k_norm, cfg.rms_norm_eps)), q, k)
        q = apply_rope(q, step.positions, inv_freq)
        k = apply_rope(k, step.positions, inv_freq)
        k_pages, v_pages = kernels.write_kv(k_pages, v_pages, k, v, step.slots, impl=attn_impl)
        attn = kernels.ragged_paged_attention(
            q, k_pages, v_pages, step.query_start, step.kv_lens, step.page_table,
            sm_scale=D ** -0.5, sliding_window=cfg.sliding_window, impl=attn_impl, hint=hint,
            batch_invariant=invariant)
    x, mlp = rowwise(lambda x, a: _mlp_out(lw, x, a, cfg, attn_impl, mm, fused_norm), x, attn.reshape(T, H * D))
    return x, mlp, k_pages, v_pages


# Each layer is a nested jit: traced and lowered once per step shape, not once per layer (an 8B step:
# 0.16 s instead of 0.94 s on a CPU; more with the Pallas kernels, whose lowering is the heavy part).
# XLA inlines the calls, so the compiled step is the unrolled one (identical outputs: tests/model).
_layer_jit = jax.jit(_layer, static_argnames=("cfg", "attn_impl", "hint", "mm", "fused", "fused_norm", "invariant"))


def forward(weights: Weights, kv: KVCache, step: StepInput, *, cfg: ModelConfig,
            attn_impl: str = "reference", all_logits: bool = False,
            hint: kernels.QLenHint = kernels.QLenHint(), batch_invariant: bool = False) -> tuple[jax.Array, KVCache]:
    """Run all layers on the step's tokens; write their K/V into `kv`.

    Returns fp32 logits [S, V] at step.logits_indices (or [T, V] for every token when
    all_logits) and the updated KV cache. hint (static): promised bounds on the sequences'
    new-token counts (kernels.QLenHint, e.g. a decode step's), which let attention skip kernels;
    under the decode hint with $JAXSGL_FUSED_DECODE=1 a Pallas impl runs each layer's RoPE, KV write
    and attention as one kernel (kernels/fused_decode.py); with $JAXSGL_FUSED_ADD_NORM=1 each residual
    add and the RMSNorm after it are one kernel (kernels/add_norm.py). batch_invariant (static): each
    row's sums are the same whatever else shares the step: row-wise work on fixed INVARIANT_ROWS
    blocks, attention kernels that sum in one order (kernels.ragged_paged_attention).
    """
    x = weights.embed[step.token_ids]
    inv_freq = rope_inv_freq(cfg)
    # the fused decode kernel attends to the new token apart from the cache: not the extend's sums
    fused = kernels.fused_decode_applies(attn_impl, hint) and not batch_invariant
    fused_norm = kernels.fused_add_norm_applies(attn_impl)
    new_k, new_v, delta = [], [], jnp.zeros_like(x)  # x + 0 is x: XLA drops the add
    for i, lw in enumerate(weights.layers):
        with jax.named_scope(f"layer{i}"):
            x, delta, k_i, v_i = _layer_jit(lw, x, delta, kv.k[i], kv.v[i], step, inv_freq, cfg=cfg,
                                            attn_impl=attn_impl, hint=hint, mm=matmul_output(), fused=fused,
                                            fused_norm=fused_norm, invariant=batch_invariant)
        new_k.append(k_i)
        new_v.append(v_i)
    x = x + delta
    if not all_logits:
        x = x[step.logits_indices]
    head = weights.embed.T if weights.lm_head is None else weights.lm_head

    def lm_head(x: jax.Array) -> jax.Array:
        return jnp.dot(rms_norm(x, weights.final_norm, cfg.rms_norm_eps), head, preferred_element_type=jnp.float32)

    logits = row_blocks(lm_head, INVARIANT_ROWS, x) if batch_invariant else lm_head(x)
    return logits, KVCache(new_k, new_v)


def make_forward(cfg: ModelConfig, *, attn_impl: str = "reference", all_logits: bool = False):
    """jit(forward) with the config bound and the KV cache donated."""
    fn = functools.partial(forward, cfg=cfg, attn_impl=attn_impl, all_logits=all_logits)
    return jax.jit(fn, donate_argnums=(1,))


def step_to_device(step: StepInput) -> StepInput:
    """One transfer of the step's numpy arrays (int32) to the default device."""
    return StepInput(**{f.name: jnp.asarray(getattr(step, f.name), jnp.int32)
                        for f in dataclasses.fields(StepInput)})
