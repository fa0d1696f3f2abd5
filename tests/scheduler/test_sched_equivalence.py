"""Outputs do not depend on how the scheduler ran a workload: cache on/off, page sizes
1 and 16, chunked prefill on/off, heavy eviction and retraction, every policy.
(The MockModel's token is a function of the whole context read back through the
page table, so a wrong page, slot or cached prefix changes the outputs or fails.)"""
import numpy as np
import pytest

from jaxsgl.scheduler import Req, Scheduler
from sched_harness import assert_idle_and_clean, run


def mixed_workload(n=240, seed=0):
    """Shared prefixes, branches off earlier prompts, and exact repeats."""
    rng = np.random.default_rng(seed)
    prompts: list[list[int]] = []
    bases = [rng.integers(0, 500, rng.integers(20, 120)).tolist() for _ in range(6)]
    for _ in range(n):
        kind = rng.random()
        if kind < 0.15 and prompts:
            prompt = list(prompts[rng.integers(len(prompts))])                           # repeat
        elif kind < 0.45 and prompts:
            src = prompts[rng.integers(len(prompts))]
            prompt = src[:rng.integers(1, len(src) + 1)] + rng.integers(0, 500, rng.integers(1, 40)).tolist()
        else:
            prompt = bases[rng.integers(len(bases))] + rng.integers(0, 500, rng.integers(1, 60)).tolist()
        prompts.append(prompt)
    return [(f"r{i}", p, int(rng.integers(1, 20))) for i, p in enumerate(prompts)]


CONFIGS = {
    "baseline-ps1": dict(num_pages=8192, page_size=1),
    "no-cache": dict(num_pages=8192, page_size=1, disable_radix_cache=True),
    "ps16": dict(num_pages=512, page_size=16),
    "ps16-no-chunking": dict(num_pages=512, page_size=16, chunked_prefill_size=None, max_prefill_tokens=128),
    "small-chunks": dict(num_pages=4096, page_size=2, chunked_prefill_size=24, max_prefill_tokens=24),
    "heavy-eviction": dict(num_pages=96, page_size=4, init_new_token_ratio=0.05, min_new_token_ratio=0.0),
    "lpm": dict(num_pages=2048, page_size=1, schedule_policy="lpm"),
    "dfs-weight-lfu": dict(num_pages=2048, page_size=1, schedule_policy="dfs-weight", eviction_policy="lfu"),
    "not-mixed": dict(num_pages=2048, page_size=4, mixed_batches=False),
}


def outputs_for(config):
    config = dict(config)
    sched = Scheduler.create(config.pop("num_pages"), config.pop("page_size"), max_running_requests=16,
                             **{"max_prefill_tokens": 256, **config})
    for rid, prompt, max_new in mixed_workload():
        sched.add_request(Req(rid, prompt, max_new_tokens=max_new))
    outputs = run(sched)
    assert_idle_and_clean(sched)
    return outputs, sched


@pytest.fixture(scope="module")
def reference():
    return outputs_for(CONFIGS["baseline-ps1"])[0]


@pytest.mark.parametrize("name", [k for k in CONFIGS if k != "baseline-ps1"])
def test_outputs_identical_across_configurations(name, reference):
    outputs, sched = outputs_for(CONFIGS[name])
    assert outputs == reference
    if name == "heavy-eviction":
        assert sched.stats.num_retractions > 0 and sched.cache.stats.evicted_pages > 0
