"""Randomized soak: scheduler + radix cache + MockModel, integrity checked after every step.

Requests arrive over time with random lengths and shared prefixes; some are aborted
(while waiting, running, or in flight); the pool is small and the decode headroom
low so that eviction and retraction happen. The MockModel checks every sequence's
KV against its tokens each step. At the end no page is leaked and no lock is held.
"""
import numpy as np
import pytest

from jaxsgl.scheduler import Req, ReqStatus, Scheduler
from jaxsgl.scheduler.mock_model import MockModel
from sched_harness import assert_idle_and_clean, make_builder


def soak(num_requests, *, page_size, policy, eviction, num_pages, seed, disable=False, chunk=48):
    rng = np.random.default_rng(seed)
    sched = Scheduler.create(num_pages, page_size, eviction_policy=eviction, disable_radix_cache=disable,
                             schedule_policy=policy, max_running_requests=12, max_prefill_tokens=96,
                             chunked_prefill_size=chunk, init_new_token_ratio=0.3, min_new_token_ratio=0.05,
                             new_token_ratio_decay=0.01, dedup_min_tokens=8, max_wait_steps=50,
                             random_seed=seed)
    model = MockModel(num_pages, page_size)
    builder = make_builder(sched, max_context_len=num_pages * page_size)
    docs = [rng.integers(0, 200, rng.integers(4, 80)).tolist() for _ in range(12)]
    added = aborted_in_flight = 0
    expected_outputs: dict[str, int] = {}
    while added < num_requests or sched.has_work():
        for _ in range(min(rng.poisson(1.2), num_requests - added)):
            prompt = (docs[rng.integers(len(docs))] if rng.random() < 0.7 else []) + \
                rng.integers(0, 200, rng.integers(1, 60)).tolist()
            sched.add_request(Req(f"r{added}", prompt, max_new_tokens=int(rng.integers(1, 24)),
                                  priority=int(rng.integers(0, 3))))
            added += 1
        if sched.requests and rng.random() < 0.05:
            sched.abort(list(sched.requests)[rng.integers(len(sched.requests))])
        batch = sched.schedule()
        if not batch:
            assert not sched.has_work()
            continue
        if rng.random() < 0.02:
            victim = batch.seqs[rng.integers(len(batch))].req
            sched.abort(victim)
            aborted_in_flight += 1
            sched.check_integrity()
        next_ids = model.step(builder.build(batch), batch)
        for req in sched.process_results(batch, next_ids):
            if len(req.output_ids) >= req.max_new_tokens or (req.output_ids[-1] % 97 == 0):
                sched.finish(req, "stop")
                expected_outputs[req.rid] = len(req.output_ids)
        sched.check_integrity()
    assert_idle_and_clean(sched)
    assert sched.stats.num_finished + sched.stats.num_aborted == num_requests
    assert all(n >= 1 for n in expected_outputs.values())
    return sched


def test_soak_2000_requests_lpm_page4():
    sched = soak(2000, page_size=4, policy="lpm", eviction="lru", num_pages=96, seed=0)
    assert sched.stats.num_retractions > 0 and sched.stats.num_aborted > 0
    assert sched.cache.stats.evicted_pages > 0 and sched.stats.hit_rate > 0.05


@pytest.mark.parametrize("page_size,policy,eviction,disable", [
    (1, "fcfs", "lfu", False),
    (2, "dfs-weight", "fifo", False),
    (1, "random", "mru", False),
    (4, "lof", "priority", False),
    (4, "fcfs", "lru", True),
])
def test_soak_other_configurations(page_size, policy, eviction, disable):
    sched = soak(300, page_size=page_size, policy=policy, eviction=eviction, num_pages=384 // page_size,
                 seed=1, disable=disable)
    assert sched.stats.num_finished > 0
    if disable:
        assert sched.stats.hit_rate == 0 and sched.cache.stats.inserted_pages == 0
