"""Shared helpers for scheduler tests: a run loop over the MockModel."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jaxsgl.scheduler import Req, Scheduler, StepInputBuilder
from jaxsgl.scheduler.mock_model import MockModel


def make_builder(sched: Scheduler, max_context_len: int) -> StepInputBuilder:
    cfg = sched.config
    return StepInputBuilder.for_limits(sched.page_size, max_tokens=cfg.prefill_budget + cfg.max_running_requests,
                                       max_seqs=cfg.max_running_requests, max_context_len=max_context_len)


def run(sched: Scheduler, *, max_context_len: int = 4096, check: bool = True, max_steps: int = 100_000,
        on_step: Callable[[Scheduler, int], None] | None = None) -> dict[str, list[int]]:
    """Drive the scheduler with the MockModel until idle; finish a request when it has
    max_new_tokens outputs. Returns {rid: output_ids} of finished requests."""
    model = MockModel(sched.pool.num_pages, sched.page_size)
    builder = make_builder(sched, max_context_len)
    outputs: dict[str, list[int]] = {}
    steps = 0
    while sched.has_work():
        steps += 1
        assert steps <= max_steps, "scheduler made no progress"
        if on_step is not None:
            on_step(sched, steps)
            if not sched.has_work():
                break
        batch = sched.schedule()
        assert batch, f"empty batch with work left: {sched.waiting[:3]} {sched.running[:3]}"
        next_ids = model.step(builder.build(batch), batch)
        for req in sched.process_results(batch, next_ids):
            if len(req.output_ids) >= req.max_new_tokens:
                sched.finish(req, "length")
                outputs[req.rid] = list(req.output_ids)
        if check:
            sched.check_integrity()
    return outputs


def assert_idle_and_clean(sched: Scheduler) -> None:
    """No request left, no lock held, every page free or evictable; evicting all frees all."""
    sched.check_integrity()
    assert not sched.waiting and not sched.running
    assert sched.cache.locked_pages == 0
    assert sched.pool.num_free + sched.cache.evictable_pages == sched.pool.capacity
    sched.cache.evict_all()
    assert sched.pool.num_free == sched.pool.capacity
    sched.pool.check_integrity()


def shared_prefix_workload(rng: np.random.Generator, *, num_groups: int, per_group: int, system_len: int,
                           group_len: int, question_len: int, max_new_tokens: int, vocab: int = 1000) -> list[Req]:
    """num_groups x per_group prompts = system prompt + group prefix + own question, shuffled."""
    system = rng.integers(0, vocab, system_len).tolist()
    reqs = []
    for g in range(num_groups):
        group = rng.integers(0, vocab, group_len).tolist()
        for i in range(per_group):
            question = rng.integers(0, vocab, question_len).tolist()
            reqs.append(Req(f"g{g}-{i}", system + group + question, max_new_tokens=max_new_tokens))
    order = rng.permutation(len(reqs))
    return [reqs[i] for i in order]


def unique_prompt_tokens(prompts: list[list[int]]) -> int:
    """Tokens in the trie of all prompts: the least any schedule must prefill."""
    root: dict = {}
    count = 0
    for p in prompts:
        node = root
        for t in p:
            if t not in node:
                node[t] = {}
                count += 1
            node = node[t]
    return count
