"""Scheduling policies order the queue as documented; custom ones plug in by name."""
import pytest

from jaxsgl.cache import PagePool, RadixCache
from jaxsgl.scheduler import Req, SchedulePolicy, make_schedule_policy, register_schedule_policy, schedule_policy_names


def cache_with(*prefixes):
    pool = PagePool(256)
    cache = RadixCache(pool)
    for p in prefixes:
        cache.insert(p, pool.alloc(len(p)))
    return cache


def reqs(*specs):
    out = []
    for i, (prompt, max_new) in enumerate(specs):
        r = Req(f"r{i}", prompt, max_new_tokens=max_new, arrival_time=float(i))
        r.seq_no = i
        out.append(r)
    return out


def rids(ordered):
    return [r.rid for r in ordered]


def test_registry():
    assert {"fcfs", "lpm", "dfs-weight", "random", "lof"} <= set(schedule_policy_names())
    with pytest.raises(ValueError, match="unknown schedule policy"):
        make_schedule_policy("nope")


def test_fcfs_is_arrival_order():
    waiting = reqs(([1], 1), ([2], 1), ([3], 1))[::-1]
    assert rids(make_schedule_policy("fcfs").order(waiting, cache_with())) == ["r0", "r1", "r2"]


def test_lpm_prefers_longest_cached_prefix():
    cache = cache_with([1, 2, 3, 4, 5, 6], [7, 8])
    waiting = reqs(([9, 9, 9], 1), ([7, 8, 0], 1), ([1, 2, 3, 4, 5, 6, 0], 1), ([1, 2, 0], 1))
    assert rids(make_schedule_policy("lpm").order(waiting, cache)) == ["r2", "r1", "r3", "r0"]
    assert cache.stats.lookups == 0  # policies only peek


def test_dfs_weight_groups_by_heaviest_subtree():
    cache = cache_with([1, 1, 1, 1], [2, 2, 2, 2])
    waiting = reqs(([1, 1, 1, 1, 5], 1), ([2, 2, 2, 2, 5], 1), ([2, 2, 2, 2, 6], 1),
                   ([9, 9], 1), ([2, 2, 2, 2, 7], 1), ([1, 1, 1, 1, 6], 1))
    ordered = rids(make_schedule_policy("dfs-weight").order(waiting, cache))
    # the [2 2 2 2] subtree (3 requests) before [1 1 1 1] (2); nothing cached (root) last
    assert ordered == ["r1", "r2", "r4", "r0", "r5", "r3"]


def test_lof_prefers_longest_remaining_output():
    waiting = reqs(([1], 5), ([2], 50), ([3], 10))
    assert rids(make_schedule_policy("lof").order(waiting, cache_with())) == ["r1", "r2", "r0"]


def test_random_is_a_seeded_permutation():
    waiting = reqs(*[([i], 1) for i in range(20)])
    a = rids(make_schedule_policy("random", seed=1).order(waiting, cache_with()))
    b = rids(make_schedule_policy("random", seed=1).order(waiting, cache_with()))
    assert a == b and sorted(a) == sorted(rids(waiting)) and a != rids(waiting)


def test_custom_policy_plugs_in_by_name():
    @register_schedule_policy
    class ShortestPromptFirst(SchedulePolicy):
        name = "test-shortest-prompt"

        def order(self, waiting, cache):
            return sorted(waiting, key=lambda r: len(r.prompt_ids))

    waiting = reqs(([1, 1, 1], 1), ([2], 1))
    assert rids(make_schedule_policy("test-shortest-prompt").order(waiting, cache_with())) == ["r1", "r0"]
