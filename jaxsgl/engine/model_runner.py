"""ModelRunner: owns the weights and the KV pages, and runs one jitted step (forward + sampling).

The step function is jitted once per (StepInput bucket shape, SamplingFlags); the
KV cache is donated through it. Outputs come back to the host as numpy in one
transfer per step.

Two ways to run a step:
  - run(): synchronous, returns host arrays (the reference path);
  - run_async() + collect(): overlap scheduling. run_async dispatches the step and
    returns a StepHandle holding its device outputs (JAX dispatch does not block);
    it takes the previous step's handle and a per-token source-row index, and the
    jitted step reads token_ids[t] = prev.tokens[src[t]] where src[t] >= 0, so a
    decode can feed a token that has not reached the host yet. collect() is the
    only call that waits for the device.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl import kernels
from jaxsgl.engine.grammar_tables import GrammarTables
from jaxsgl.engine.sampling import SampleOutput, SamplingFlags, SamplingInput, output_layout, sample
from jaxsgl.engine.packing import Layout, pack, pack_device, unpack, unpack_host
from jaxsgl.model.compile_cache import persistent_jit
from jaxsgl.model.config import ModelConfig
from jaxsgl.model.forward import KVCache, forward, init_kv_cache, kv_bytes_per_token
from jaxsgl.model.step_input import PAD_PAGE, StepInput, step_input_fields
from jaxsgl.model.weights import Weights

log = logging.getLogger(__name__)

# XLA's part of deterministic inference, beside forward's fixed row blocks (which give every GEMM one
# shape): a GEMM's K sum in one piece (no split-K partials plus a reduction), and bf16 values rounded
# wherever the program says (by default a fusion may keep an f32 intermediate, and fusions differ between
# a step with one row block, whose loop XLA removes, and a step with several).
DETERMINISTIC_XLA_OPTIONS = (("xla_gpu_experimental_force_split_k", 1), ("xla_allow_excess_precision", False))


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
    next_state: np.ndarray | None


@dataclass
class StepHandle:
    """A dispatched step: its outputs still on the device."""

    out: jax.Array       # packed SampleOutput (int32), read back by collect()
    tokens: jax.Array    # int32[2, carry]: sampled ids and next automaton states (rows beyond S are 0)
    layout: tuple        # output_layout of `out`


def _step(weights: Weights, kv: KVCache, flat: jax.Array, page_table: jax.Array, *, layout: Layout,
          hint: kernels.QLenHint, cfg: ModelConfig, attn_impl: str, flags: SamplingFlags,
          invariant: bool = False) -> tuple[jax.Array, KVCache]:
    """Unpack the step's inputs, run forward + sampling, pack the outputs into one int32 array.
    hint (static): the attention kernels' promised bounds on the sequences' new-token counts;
    invariant: batch-invariant attention (forward's batch_invariant)."""
    arrays = {**unpack(_on_device(flat), layout), "step.page_table": _on_device(page_table)}
    out, _, kv = _forward_sample(weights, kv, arrays, None, hint=hint, cfg=cfg, attn_impl=attn_impl, flags=flags,
                                 invariant=invariant)
    return out, kv


def _step_overlap(weights: Weights, kv: KVCache, flat: jax.Array, page_table: jax.Array, prev: jax.Array,
                  grammar: GrammarTables | None, *, layout: Layout, hint: kernels.QLenHint, cfg: ModelConfig,
                  attn_impl: str, flags: SamplingFlags, invariant: bool = False) -> tuple[jax.Array, jax.Array, KVCache]:
    """_step whose token_ids[t] come from prev[0, src[t]] where src[t] >= 0 (and, with a grammar,
    each row's automaton state from prev[1, grammar_src] where grammar_src >= 0); also returns
    int32[2, carry]: the sampled ids and next automaton states (the next step's prev)."""
    arrays = {**unpack(_on_device(flat), layout), "step.page_table": _on_device(page_table)}
    src = arrays.pop("src")
    arrays["step.token_ids"] = jnp.where(src >= 0, prev[0, jnp.maximum(src, 0)], arrays["step.token_ids"])
    if flags.grammar:
        gsrc = arrays["samp.grammar_src"]
        arrays["samp.grammar_state"] = jnp.where(gsrc >= 0, prev[1, jnp.maximum(gsrc, 0)],
                                                 arrays["samp.grammar_state"])
    out, sampled, kv = _forward_sample(weights, kv, arrays, grammar, hint=hint, cfg=cfg, attn_impl=attn_impl,
                                       flags=flags, invariant=invariant)
    carry = jnp.zeros_like(prev).at[0, :sampled.token_ids.shape[0]].set(sampled.token_ids)
    if flags.grammar:
        carry = carry.at[1, :sampled.next_state.shape[0]].set(sampled.next_state)
    return out, carry, kv


def _on_device(x: jax.Array) -> jax.Array:
    """Inside a jitted step: an input given in host memory (run_async's page-locked inputs), copied to
    the device as part of the step; a no-op for an input already on the device."""
    return jax.device_put(x, jax.memory.Space.Device)


def _forward_sample(weights: Weights, kv: KVCache, arrays: dict[str, jax.Array], grammar: GrammarTables | None,
                    *, hint: kernels.QLenHint, cfg: ModelConfig, attn_impl: str,
                    flags: SamplingFlags, invariant: bool = False) -> tuple[jax.Array, SampleOutput, KVCache]:
    """Forward + sampling on unpacked inputs: (packed outputs, the SampleOutput, new KV)."""
    step = StepInput(**{n: arrays["step." + n] for n in step_input_fields()})
    si = SamplingInput(**{f.name: arrays["samp." + f.name] for f in dataclasses.fields(SamplingInput)})
    logits, kv = forward(weights, kv, step, cfg=cfg, attn_impl=attn_impl, all_logits=flags.input_logprobs,
                         hint=hint, batch_invariant=invariant)
    all_logits = None
    if flags.input_logprobs:
        all_logits, logits = logits, logits[step.logits_indices]
    sampled = sample(logits, si, flags, all_logits, grammar)
    out, out_layout = pack_device(sampled._asdict())
    assert out_layout == output_layout(step.num_seqs, step.num_tokens, flags), out_layout
    return out, sampled, kv


class ModelRunner:
    """Weights + paged KV + the compiled step functions."""

    def __init__(self, cfg: ModelConfig, weights: Weights, *, num_pages: int, page_size: int,
                 kv_dtype: Any = None, attn_impl: str = "reference", max_seqs: int = 0,
                 pages_per_seq: int | None = None, pinned_inputs: bool | None = None,
                 deterministic: bool = False) -> None:
        """pages_per_seq: the page-table width every step is compiled for, when there is one (the
        kernels'): a narrower table (StepInputBuilder.narrow_page_tables) travels as it is and is
        padded to this width on the device. None: steps run at the width they come with.
        pinned_inputs: run_async sends its inputs in page-locked host memory (where the backend has
        it); False: as numpy, like run(). None: True unless $JAXSGL_PINNED_INPUTS is "0" (A/B runs).
        deterministic: every row computed the same whatever batch it runs in (SGLang's
        --enable-deterministic-inference): forward's row blocks, batch-invariant attention, DETERMINISTIC_XLA_OPTIONS."""
        self.cfg = cfg
        self.pages_per_seq = pages_per_seq
        self.weights = weights
        self.page_size = page_size
        self.attn_impl = attn_impl
        self.deterministic = deterministic
        self.kv_dtype = kv_dtype or weights.embed.dtype
        self.device = jax.devices()[0]
        t0 = time.perf_counter()
        # committed to the device, as every step's KV output is once its inputs are (page-locked ones
        # are): the executables warm-up compiles then match the ones the steps call
        self.kv = jax.block_until_ready(init_kv_cache(cfg, num_pages, page_size, self.kv_dtype, self.device))
        kv_s = time.perf_counter() - t0
        self._fns: dict[SamplingFlags, Any] = {}
        self._overlap_fns: dict[SamplingFlags, Any] = {}
        self.max_seqs = max_seqs  # run_async: rows carried from one step to the next (>= any step's S)
        # run_async's "previous tokens" when there is no previous step (device_put: no compile, unlike
        # jnp.zeros), committed like a previous step's tokens (warm-up lowers the steps with it)
        self._no_prev = jax.device_put(np.zeros((2, max_seqs), np.int32), self.device)
        if pinned_inputs is None:
            pinned_inputs = os.environ.get("JAXSGL_PINNED_INPUTS", "1") != "0"
        has_pinned = "pinned_host" in {m.kind for m in self.device.addressable_memories()}
        self._pinned = (jax.sharding.SingleDeviceSharding(self.device, memory_kind="pinned_host")
                        if pinned_inputs and has_pinned else None)
        log.info("KV cache: %d pages x %d tokens, %.1f MiB in %.1fs", num_pages, page_size,
                 num_pages * page_size * kv_bytes_per_token(cfg, self.kv_dtype) / 2**20, kv_s)

    def reset_kv(self) -> None:
        """Fresh zeroed KV pages (after a failed step may have consumed the donated ones). The old
        pages are released first: the pool fills most of the accelerator, two would not fit."""
        num_pages = self.kv.num_pages
        self.release_kv()
        self.kv = init_kv_cache(self.cfg, num_pages, self.page_size, self.kv_dtype, self.device)

    def release_kv(self) -> None:
        """Free the KV pages now (sets self.kv to None), so that a next engine in this process
        sizes its pool from the memory they held."""
        for leaf in jax.tree_util.tree_leaves(self.kv):
            if not leaf.is_deleted():
                leaf.delete()
        self.kv = None

    def _fn(self, flags: SamplingFlags):
        if flags not in self._fns:
            fn = functools.partial(_step, cfg=self.cfg, attn_impl=self.attn_impl, flags=flags,
                                   invariant=self.deterministic)
            self._fns[flags] = persistent_jit(fn, donate_argnums=(1,), static_argnames=("layout", "hint"),
                                              compiler_options=self._compiler_options())
        return self._fns[flags]

    def run(self, step: StepInput, si: SamplingInput, flags: SamplingFlags,
            hint: kernels.QLenHint | None = None) -> StepOutputHost:
        """Run one step; mutates self.kv (the new tokens' K/V are written). hint: the compiled
        variant (one of self.hints(); warm-up picks each); None: the one the step needs."""
        flat, layout = pack(_inputs(step, si))
        out, self.kv = self._fn(flags)(self.weights, self.kv, flat, self._page_table(step), layout=layout,
                                       hint=self._hint(step, hint))
        return _unpack_output(np.asarray(out), output_layout(step.num_seqs, step.num_tokens, flags))

    def run_async(self, step: StepInput, si: SamplingInput, flags: SamplingFlags, prev: StepHandle | None,
                  src: np.ndarray, hint: kernels.QLenHint | None = None,
                  grammar: GrammarTables | None = None) -> StepHandle:
        """Dispatch one step without waiting for it; mutates self.kv (a future). src int32[T]:
        token_ids[t] = prev.tokens[src[t]] where src[t] >= 0 (prev's sampled row src[t]).
        grammar: the device automaton tables (needed when flags.grammar)."""
        if flags.grammar and grammar is None:
            raise ValueError("run_async: flags.grammar needs the grammar tables")
        if not 0 < step.num_seqs <= self.max_seqs:
            raise ValueError(f"run_async: {step.num_seqs} sequences, carry size max_seqs={self.max_seqs}")
        if prev is None:
            if (src >= 0).any():
                raise ValueError("run_async: src refers to a previous step but none was given")
        flat, layout = pack({**_inputs(step, si), "src": np.asarray(src, np.int32)})
        out, tokens, self.kv = self._overlap_fn(flags)(self.weights, self.kv, self._host(flat),
                                                       self._page_table(step, self._host),
                                                       self._no_prev if prev is None else prev.tokens,
                                                       grammar if flags.grammar else None, layout=layout,
                                                       hint=self._hint(step, hint))
        return StepHandle(out, tokens, output_layout(step.num_seqs, step.num_tokens, flags))

    def lower_async_step(self, step: StepInput, si: SamplingInput, flags: SamplingFlags,
                         hint: kernels.QLenHint) -> Callable[[], None]:
        """Lower the run_async executable for this step's shapes (grammar-free flags only); returns the
        thunk that compiles it without running it (thread-safe: warm-up compiles several variants at
        once). Mutates nothing else."""
        if flags.grammar:
            raise ValueError("lower_async_step: grammar steps need the grammar tables")
        flat, layout = pack({**_inputs(step, si), "src": np.full(step.num_tokens, -1, np.int32)})
        return self._overlap_fn(flags).lower(self.weights, self.kv, self._host(flat),
                                             self._page_table(step, self._host), self._no_prev,
                                             None, layout=layout, hint=self._hint(step, hint))

    def _overlap_fn(self, flags: SamplingFlags):
        if flags not in self._overlap_fns:
            fn = functools.partial(_step_overlap, cfg=self.cfg, attn_impl=self.attn_impl, flags=flags,
                                   invariant=self.deterministic)
            self._overlap_fns.setdefault(flags, persistent_jit(fn, donate_argnums=(1,), static_argnames=("layout", "hint"),
                                                               compiler_options=self._compiler_options()))
        return self._overlap_fns[flags]

    def _compiler_options(self) -> dict[str, Any] | None:
        return dict(DETERMINISTIC_XLA_OPTIONS) if self.deterministic else None

    def _host(self, x: np.ndarray) -> Any:
        """A host input of run_async as its jitted step takes it: in page-locked host memory (the step
        copies it to the device, without the launch waiting for the step in flight), else as it is."""
        return x if self._pinned is None else jax.device_put(x, self._pinned)

    def _page_table(self, step: StepInput, send: Callable[[np.ndarray], Any] = lambda x: x) -> Any:
        """The step's page table as its jitted step takes it (through `send`: run_async's _host): as
        it is without pages_per_seq, else sent as narrow as build() made it and padded with PAD_PAGE
        to pages_per_seq on the device (always in device memory: one executable per shape). At
        batch 256 the 8B model's full table (8,192 pages of a 128k context) is 8 MB a step to build,
        pack and copy; the pages in use are a few KB. Reads nothing else; the padding jit compiles
        once per shape."""
        pt = step.page_table
        width = self.pages_per_seq
        if width is None:
            return send(pt)
        if pt.shape[1] > width:
            raise ValueError(f"page table of width {pt.shape[1]} > pages_per_seq {width}")
        # full width too goes through the device padding: the step then always takes its page table in
        # device memory (sent as it is, a full table would be in page-locked host memory, another
        # executable than the narrow tables' that warm-up does not compile)
        return _widen_page_table(send(pt), width=width)

    def warm_page_tables(self, seq_buckets: list[int], widths: list[int]) -> None:
        """Compile (and run once) the device padding of each narrow page-table width, for each
        sequence bucket (warm-up: no compile mid-serving). Mutates nothing."""
        if self.pages_per_seq is None:
            return
        for S in seq_buckets:
            for w in widths:
                if w < self.pages_per_seq:
                    table = self._host(np.full((S, w), PAD_PAGE, np.int32))
                    _widen_page_table(table, width=self.pages_per_seq).block_until_ready()

    def hints(self) -> tuple[kernels.QLenHint, ...]:
        """The attention hints a step can compile under (kernels.step_hints)."""
        return kernels.step_hints(self.attn_impl)

    def _hint(self, step: StepInput, hint: kernels.QLenHint | None) -> kernels.QLenHint:
        if hint is None:
            return kernels.step_hint(np.diff(step.query_start), self.attn_impl)
        if hint not in self.hints():
            raise ValueError(f"hint {hint} is not one of {self.hints()}")
        return hint

    def collect(self, handle: StepHandle) -> StepOutputHost:
        """Wait for a dispatched step and bring its outputs to the host (one transfer)."""
        return _unpack_output(np.asarray(handle.out), handle.layout)

    def num_compiled(self) -> int:
        """How many step executables (shape x flags x hint variants) have been compiled so far."""
        return sum(f._cache_size() for f in (*self._fns.values(), *self._overlap_fns.values()))


@functools.partial(jax.jit, static_argnames=("width",))
def _widen_page_table(page_table: jax.Array, *, width: int) -> jax.Array:
    return jnp.pad(_on_device(page_table), ((0, 0), (0, width - page_table.shape[1])), constant_values=PAD_PAGE)


def _inputs(step: StepInput, si: SamplingInput) -> dict[str, np.ndarray]:
    """The packed buffer's arrays: every StepInput field but the page table (its own argument)."""
    arrays = {"step." + n: getattr(step, n) for n in step_input_fields() if n != "page_table"}
    arrays.update({"samp." + f.name: getattr(si, f.name) for f in dataclasses.fields(si)})
    return arrays


def _unpack_output(flat: np.ndarray, layout: tuple) -> StepOutputHost:
    got = unpack_host(flat, layout)
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
