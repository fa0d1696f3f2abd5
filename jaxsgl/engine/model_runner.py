"""ModelRunner: owns the weights and the KV pages, and runs one jitted step (forward + sampling).

The step function is jitted once per (StepInput bucket shape, SamplingFlags); the
KV cache is donated through it. Outputs come back to the host as numpy in one
transfer per step.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np

from jaxsgl.engine.sampling import SampleOutput, SamplingFlags, SamplingInput, output_layout, sample
from jaxsgl.engine.packing import Layout, pack, pack_device, unpack, unpack_host
from jaxsgl.model.config import ModelConfig
from jaxsgl.model.forward import KVCache, forward, init_kv_cache, kv_bytes_per_token
from jaxsgl.model.step_input import StepInput, step_input_fields
from jaxsgl.model.weights import Weights

log = logging.getLogger(__name__)


@dataclass
class StepOutputHost:
    """One step's results on the host (numpy), rows like the StepInput's sequences/tokens."""

    token_ids: np.ndarray
    logprobs: np.ndarray
    top_ids: np.ndarray | None
    top_logprobs: np.ndarray | None
    input_logprobs: np.ndarray | None
    input_top_ids: np.ndarray | None
    input_top_logprobs: np.ndarray | None


def _step(weights: Weights, kv: KVCache, flat: jax.Array, *, layout: Layout, cfg: ModelConfig,
          attn_impl: str, flags: SamplingFlags) -> tuple[jax.Array, KVCache]:
    """Unpack the step's inputs, run forward + sampling, pack the outputs into one int32 array."""
    arrays = unpack(flat, layout)
    step = StepInput(**{n: arrays["step." + n] for n in step_input_fields()})
    si = SamplingInput(**{f.name: arrays["samp." + f.name] for f in dataclasses.fields(SamplingInput)})
    logits, kv = forward(weights, kv, step, cfg=cfg, attn_impl=attn_impl, all_logits=flags.input_logprobs)
    all_logits = None
    if flags.input_logprobs:
        all_logits, logits = logits, logits[step.logits_indices]
    out, out_layout = pack_device(sample(logits, si, flags, all_logits)._asdict())
    assert out_layout == output_layout(step.num_seqs, step.num_tokens, flags), out_layout
    return out, kv


class ModelRunner:
    """Weights + paged KV + the compiled step functions."""

    def __init__(self, cfg: ModelConfig, weights: Weights, *, num_pages: int, page_size: int,
                 kv_dtype: Any = None, attn_impl: str = "reference") -> None:
        self.cfg = cfg
        self.weights = weights
        self.page_size = page_size
        self.attn_impl = attn_impl
        self.kv_dtype = kv_dtype or weights.embed.dtype
        self.kv = init_kv_cache(cfg, num_pages, page_size, self.kv_dtype)
        self._fns: dict[SamplingFlags, Any] = {}
        log.info("KV cache: %d pages x %d tokens, %.1f MiB", num_pages, page_size,
                 num_pages * page_size * kv_bytes_per_token(cfg, self.kv_dtype) / 2**20)

    def reset_kv(self) -> None:
        """Fresh zeroed KV pages (after a failed step may have consumed the donated ones)."""
        self.kv = init_kv_cache(self.cfg, self.kv.num_pages, self.page_size, self.kv_dtype)

    def _fn(self, flags: SamplingFlags):
        if flags not in self._fns:
            fn = functools.partial(_step, cfg=self.cfg, attn_impl=self.attn_impl, flags=flags)
            self._fns[flags] = jax.jit(fn, donate_argnums=(1,), static_argnames=("layout",))
        return self._fns[flags]

    def run(self, step: StepInput, si: SamplingInput, flags: SamplingFlags) -> StepOutputHost:
        """Run one step; mutates self.kv (the new tokens' K/V are written)."""
        arrays = {"step." + n: getattr(step, n) for n in step_input_fields()}
        arrays.update({"samp." + f.name: getattr(si, f.name) for f in dataclasses.fields(si)})
        flat, layout = pack(arrays)
        out, self.kv = self._fn(flags)(self.weights, self.kv, flat, layout=layout)
        got = unpack_host(np.asarray(out), output_layout(step.num_seqs, step.num_tokens, flags))
        return StepOutputHost(*[got.get(name) for name in SampleOutput._fields])


def kv_pages_for_memory(cfg: ModelConfig, page_size: int, dtype: Any, fraction: float = 0.85,
                        weights_bytes: int = 0) -> int | None:
    """Pages that fit in `fraction` of the accelerator's memory after the weights (None if unknown)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # the CPU backend has no memory stats
        return None
    limit = stats.get("bytes_limit")
    if not limit:
        return None
    free = fraction * limit - stats.get("bytes_in_use", weights_bytes)
    return max(int(free // (page_size * kv_bytes_per_token(cfg, dtype))), 2)


def weights_nbytes(weights: Weights) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(weights))
