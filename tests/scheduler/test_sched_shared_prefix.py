"""Shared-prefix workload (16 groups x 8 prompts under a long system prompt, shuffled).

The optimum hit rate is 1 - (tokens in the trie of all prompts) / (all prompt tokens):
every distinct prefix must be prefilled at least once. With a KV pool too small to
keep every group's prefix, LPM (grouping requests by cached prefix) stays at the
optimum while FCFS and random order re-prefill evicted group prefixes.
"""
import numpy as np
import pytest

from jaxsgl.scheduler import Scheduler
from sched_harness import assert_idle_and_clean, run, shared_prefix_workload, unique_prompt_tokens

WORKLOAD = dict(num_groups=16, per_group=8, system_len=512, group_len=128, question_len=32, max_new_tokens=16)


def hit_rate(policy, *, num_pages=2048, page_size=1, **config):
    reqs = shared_prefix_workload(np.random.default_rng(0), **WORKLOAD)
    sched = Scheduler.create(num_pages, page_size, schedule_policy=policy, max_running_requests=16,
                             max_prefill_tokens=4096, chunked_prefill_size=4096, **config)
    for r in reqs:
        sched.add_request(r)
    run(sched, check=False)
    assert_idle_and_clean(sched)
    total = sum(len(r.prompt_ids) for r in reqs)
    optimum = 1 - unique_prompt_tokens([r.prompt_ids for r in reqs]) / total
    return sched.stats.hit_rate, optimum, len(sched.trace)


def test_lpm_is_within_2_percent_of_optimum():
    lpm, optimum, lpm_steps = hit_rate("lpm")
    fcfs, _, fcfs_steps = hit_rate("fcfs")
    rand, _, rand_steps = hit_rate("random")
    dfs, _, dfs_steps = hit_rate("dfs-weight")
    print(f"\nshared-prefix hit rate (optimum {optimum:.3f}): lpm {lpm:.3f} ({lpm_steps} steps), "
          f"dfs-weight {dfs:.3f} ({dfs_steps}), fcfs {fcfs:.3f} ({fcfs_steps}), random {rand:.3f} ({rand_steps})")
    assert lpm >= optimum - 0.02
    assert dfs >= optimum - 0.02
    assert lpm > fcfs + 0.03 and lpm > rand + 0.03


@pytest.mark.parametrize("policy", ["fcfs", "lpm"])
def test_ample_memory_reaches_optimum_thanks_to_dedup(policy):
    rate, optimum, _ = hit_rate(policy, num_pages=16384)
    assert rate == pytest.approx(optimum, abs=1e-9)


def test_without_dedup_shared_prefixes_are_prefilled_in_parallel():
    with_dedup, optimum, _ = hit_rate("fcfs", num_pages=16384)
    without, _, _ = hit_rate("fcfs", num_pages=16384, enable_prefix_dedup=False)
    assert without < with_dedup - 0.02
