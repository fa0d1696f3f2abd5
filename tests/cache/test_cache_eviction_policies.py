"""Each eviction policy evicts what it should; custom policies plug in by name."""
import pytest

from jaxsgl.cache import (EvictionPolicy, PagePool, RadixCache, eviction_policy_names, make_eviction_policy,
                          register_eviction_policy)

A, B, C = [1, 1], [2, 2], [3, 3]  # three 2-token leaves under the root


def build(policy, priorities=(0, 0, 0)):
    pool = PagePool(16)
    cache = RadixCache(pool, policy)
    for key, prio in zip((A, B, C), priorities):
        cache.insert(key, pool.alloc(2), priority=prio)
    return cache


def eviction_order(cache):
    """Evict one leaf at a time and report which key went."""
    order = []
    remaining = [A, B, C]
    while cache.evictable_pages:
        cache.evict(1)
        gone = [k for k in remaining if cache.prefix_len(k) == 0]
        assert len(gone) == 1
        order.append(gone[0])
        remaining.remove(gone[0])
    return order


def touch(cache, key, times=1):
    for _ in range(times):
        cache.match_prefix(key)


def test_registry_lists_builtin_policies():
    assert {"lru", "lfu", "fifo", "mru", "priority"} <= set(eviction_policy_names())
    with pytest.raises(ValueError, match="unknown eviction policy"):
        make_eviction_policy("nope")


def test_lru_evicts_least_recently_used():
    cache = build("lru")
    touch(cache, A)
    assert eviction_order(cache) == [B, C, A]


def test_mru_evicts_most_recently_used():
    cache = build("mru")
    touch(cache, A)
    assert eviction_order(cache) == [A, C, B]


def test_fifo_evicts_oldest_regardless_of_use():
    cache = build("fifo")
    touch(cache, A, 5)
    assert eviction_order(cache) == [A, B, C]


def test_lfu_evicts_least_frequently_hit():
    cache = build("lfu")
    touch(cache, A, 3)
    touch(cache, C, 2)
    touch(cache, B, 1)  # most recent, but fewest hits
    assert eviction_order(cache) == [B, C, A]


def test_priority_evicts_lowest_priority_first():
    cache = build("priority", priorities=(5, 1, 3))
    touch(cache, B, 3)
    assert eviction_order(cache) == [B, C, A]


def test_eviction_never_takes_locked_leaves():
    for name in eviction_policy_names():
        cache = build(name)
        node = cache.match_prefix(B).node
        cache.lock(node)
        cache.evict(100)
        assert cache.prefix_len(B) == 2 and cache.prefix_len(A) == 0 and cache.prefix_len(C) == 0
        cache.unlock(node)
        cache.check_integrity(owned_elsewhere=[])


def test_parent_becomes_candidate_after_its_children_go():
    pool = PagePool(16)
    cache = RadixCache(pool, "lru")
    cache.insert([1, 2, 3], pool.alloc(3))
    pages = pool.alloc(3)
    res = cache.insert([1, 2, 4], pages)  # shares [1, 2]: our first two pages are duplicates
    pool.free(pages[:res.prefix_len])
    cache.check_integrity(owned_elsewhere=[])
    assert cache.evict(1) == 1 and cache.prefix_len([1, 2, 9]) == 2   # one leaf
    assert cache.evict(2) == 3 and pool.num_free == 16  # the other leaf, then its parent [1, 2]


def test_custom_policy_plugs_in_by_name():
    @register_eviction_policy
    class LargestFirst(EvictionPolicy):
        name = "test-largest-first"

        def key(self, node):
            return (-node.num_pages, node.last_access)

    pool = PagePool(16)
    cache = RadixCache(pool, "test-largest-first")
    cache.insert([1], pool.alloc(1))
    cache.insert([2, 2, 2], pool.alloc(3))
    cache.evict(1)
    assert cache.prefix_len([2, 2, 2]) == 0 and cache.prefix_len([1]) == 1
