"""Warm-up: compile every step variant an engine can run, before it serves.

A variant is a bucket shape (tokens T, sequences S, pages per sequence P) under one of the runner's
attention hints (kernels.step_hints: generic, decode-only, long extends only), restricted to the
shapes a batch under that hint pads to. They compile ahead of time on several threads (XLA compiles
without the GIL; jax.jit reuses an ahead-of-time compile), then each runs once as an all-padding
step, which writes no KV.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from jaxsgl.engine.model_runner import ModelRunner
from jaxsgl.engine.sampling import SamplingFlags
from jaxsgl.engine.step_sampling import greedy_sampling_input
from jaxsgl.kernels import QLenHint
from jaxsgl.model.step_input import PAD_PAGE, PAD_SLOT, StepInput
from jaxsgl.progress import progress
from jaxsgl.scheduler import StepInputBuilder

log = logging.getLogger(__name__)
MANY_VARIANTS = 64  # more than this: warn (the default options on a CPU give 276)

Variant = tuple[tuple[int, int, int], QLenHint]


def step_variants(runner: ModelRunner, builder: StepInputBuilder) -> list[Variant]:
    """Every (shape, hint) the engine's greedy steps can compile to."""
    variants = []
    for hint in runner.hints():
        shapes = builder.shapes() if hint == QLenHint() else builder.shapes_for(hint.min_q_len or 1, hint.max_q_len)
        variants += [(shape, hint) for shape in shapes]
    return variants


def padding_step(T: int, S: int, P: int) -> StepInput:
    """A step of shape (T, S, P) whose every token and page is padding."""
    return StepInput(np.zeros(T, np.int32), np.zeros(T, np.int32), np.zeros(S + 1, np.int32), np.zeros(S, np.int32),
                     np.full((S, P), PAD_PAGE, np.int32), np.full(T, PAD_SLOT, np.int32), np.zeros(S, np.int32))


def warm_up(runner: ModelRunner, builder: StepInputBuilder, threads: int | None = None,
            while_compiling: Callable[[], Any] | None = None, sampled: bool = False) -> int:
    """Compile every variant on `threads` threads (None: the CPU count), then run each once (mutates
    runner's compiled-function caches and, through padding steps, nothing else). Returns how many.
    while_compiling: called on this thread once every variant is lowered, while the pool compiles
    (compiling holds no GIL: the engine loads its tokenizer there). sampled: also the variants of
    batches with temperature > 0 (SamplingFlags is part of the jit key: without them the first
    sampled request of each shape compiles)."""
    flag_sets = [SamplingFlags()] + ([SamplingFlags(sample=True)] if sampled else [])
    variants = [(shape, hint, flags) for shape, hint in step_variants(runner, builder) for flags in flag_sets]
    if len(variants) > MANY_VARIANTS:
        log.warning("warm-up: %d step variants to compile (sequence buckets %s x token buckets x page-table widths "
                    "x attention hints x sampling modes); on a CPU that takes many minutes and can exhaust the "
                    "process's memory maps: shrink it with --max-running-requests, --seq-buckets or --context-length",
                    len(variants), builder.seq_buckets)

    t0 = time.perf_counter()
    workers = max(1, min(len(variants), threads or (os.cpu_count() or 1)))
    with ThreadPoolExecutor(workers, thread_name_prefix="jaxsgl-warmup") as pool, \
            progress(desc="warm-up: compiling step variants", total=len(variants), unit="variant") as bar:
        # lowered here, one after another in a fixed order (the same IR, so the same cache keys, in
        # every process); compiled on the pool as each one is lowered
        compiles, lowering_s, done_at = [], 0.0, [t0]
        for (T, S, P), hint, flags in variants:
            t_lower = time.perf_counter()
            thunk = runner.lower_async_step(padding_step(T, S, P), greedy_sampling_input(S, T), flags, hint)
            lowering_s += time.perf_counter() - t_lower
            compiles.append(pool.submit(thunk))
            compiles[-1].add_done_callback(lambda _: (bar.update(1), done_at.append(time.perf_counter())))
        t_side = time.perf_counter()
        if while_compiling is not None:
            while_compiling()
        side_s = time.perf_counter() - t_side
        for f in compiles:
            f.result()
    t1 = time.perf_counter()
    for (T, S, P), hint, flags in variants:
        runner.collect(runner.run_async(padding_step(T, S, P), greedy_sampling_input(S, T), flags, None,
                                        np.full(T, -1, np.int32), hint=hint))
    widths = builder.narrow_widths(builder.page_buckets[-1])
    runner.warm_page_tables(builder.seq_buckets, widths)
    # which of the two ended the compile phase: the pool's last compile, or this thread's side work after
    # lowering (the tokenizer) -- whichever ended at t1 - t0
    log.info("warm-up: compiled %d step variants in %.1fs (%d threads; tracing and lowering them on this thread "
             "%.1fs, then %.1fs of side work while the pool compiled; the pool's last compile ended at %.1fs), ran "
             "them (and %d page-table paddings) in %.1fs", len(variants), t1 - t0, workers, lowering_s, side_s,
             max(done_at) - t0, len(widths) * len(builder.seq_buckets), time.perf_counter() - t1)
    return len(variants)
