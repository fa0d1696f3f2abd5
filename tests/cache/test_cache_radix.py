"""RadixCache unit tests: match, insert, split, page alignment, locks, eviction, stats."""
import pytest

from jaxsgl.cache import PagePool, RadixCache


def make(num_pages=64, page_size=1, **kw):
    pool = PagePool(num_pages, page_size)
    return pool, RadixCache(pool, **kw)


def insert(cache, key):
    """Insert key with fresh pages, freeing the caller's duplicates (the usual caller duty)."""
    pool, ps = cache.pool, cache.page_size
    pages = pool.alloc(len(key) // ps)
    res = cache.insert(key, pages)
    pool.free(pages[:res.prefix_len // ps])
    return res


def test_match_insert_and_split():
    pool, cache = make()
    res = insert(cache, [1, 2, 3, 4])
    assert res.prefix_len == 0 and res.inserted_len == 4
    m = cache.match_prefix([1, 2, 9])
    assert m.length == 2 and m.pages == cache.path_pages(res.node)[:2]
    assert m.node.key == (1, 2)  # the edge was split where the match ended
    res2 = insert(cache, [1, 2, 5])
    assert res2.prefix_len == 2 and res2.inserted_len == 1
    assert cache.match_prefix([1, 2, 3, 4, 5]).length == 4
    assert cache.match_prefix([1, 2, 5]).length == 3
    assert cache.match_prefix([7]).length == 0
    cache.check_integrity(owned_elsewhere=[])


def test_reinsert_takes_no_pages():
    pool, cache = make()
    insert(cache, [1, 2, 3])
    free = pool.num_free
    res = insert(cache, [1, 2, 3])
    assert res.prefix_len == 3 and res.inserted_len == 0 and pool.num_free == free
    cache.check_integrity(owned_elsewhere=[])


def test_page_aligned_matching_shares_whole_pages_only():
    pool, cache = make(page_size=4)
    res = insert(cache, list(range(10)))  # 2 whole pages; the last 2 tokens are not stored
    assert res.inserted_len == 8
    assert cache.match_prefix(list(range(10))).length == 8
    assert cache.match_prefix(list(range(7))).length == 4     # 7 tokens -> 1 whole page
    assert cache.match_prefix([0, 1, 2, 3, 4, 5, 9, 9]).length == 4  # mismatch inside page 2
    assert cache.match_prefix([0, 1, 2]).length == 0
    res = insert(cache, [0, 1, 2, 3, 4, 5, 6, 99, 1, 1, 1, 1])
    assert res.prefix_len == 4 and res.inserted_len == 8
    cache.check_integrity(owned_elsewhere=[])


def test_lock_protects_path_and_unlock_releases():
    pool, cache = make(num_pages=8)
    insert(cache, [1, 2, 3])
    insert(cache, [1, 2, 4, 5])
    m = cache.match_prefix([1, 2, 4, 5])
    cache.lock(m.node)
    assert cache.locked_pages == 4 and cache.evictable_pages == 1
    assert cache.evict(100) == 1          # only the unlocked branch [3]
    assert cache.match_prefix([1, 2, 4, 5]).length == 4
    cache.unlock(m.node)
    assert cache.locked_pages == 0 and cache.evictable_pages == 4
    assert cache.evict(1) == 2            # leaf [4, 5] is one node: both pages go
    assert cache.evict(100) == 2          # then its parent [1, 2] became a leaf
    assert pool.num_free == 8 and cache.stats.evicted_pages == 5
    insert(cache, [7])
    with pytest.raises(ValueError, match="unlocked"):
        cache.unlock(cache.match_prefix([7]).node)
    cache.check_integrity(owned_elsewhere=[])


def test_split_keeps_lock_handles_valid():
    pool, cache = make()
    insert(cache, [1, 2, 3, 4])
    m = cache.match_prefix([1, 2, 3, 4])
    cache.lock(m.node)
    insert(cache, [1, 2, 9])  # splits the locked edge
    assert cache.locked_pages == 4 and cache.evictable_pages == 1
    cache.check_integrity(owned_elsewhere=[])
    cache.unlock(m.node)
    assert cache.locked_pages == 0
    cache.check_integrity(owned_elsewhere=[])


def test_stats_count_touches_only():
    pool, cache = make()
    insert(cache, [1, 2, 3])
    cache.match_prefix([1, 2, 3, 4])
    cache.match_prefix([1, 5], touch=False)
    cache.match_prefix([9])
    s = cache.stats
    assert (s.lookups, s.query_tokens, s.hit_tokens) == (2, 5, 3)
    assert s.hit_rate == pytest.approx(0.6)
    assert cache.prefix_len([1, 2]) == 2 and cache.stats.lookups == 2  # read-only probe


def test_node_stats_and_timestamps():
    pool, cache = make()
    res = insert(cache, [1, 2])
    created = res.node.created_at
    cache.match_prefix([1, 2])
    cache.match_prefix([1, 2])
    assert res.node.hit_count == 2 and res.node.last_access > created


def test_disabled_cache_matches_nothing_and_takes_nothing():
    pool, cache = make(disable=True)
    pages = pool.alloc(3)
    res = cache.insert([1, 2, 3], pages)
    assert (res.prefix_len, res.inserted_len) == (0, 0) and res.node is cache.root
    assert cache.match_prefix([1, 2, 3]).length == 0
    pool.free(pages)
    cache.check_integrity(owned_elsewhere=[])


def test_integrity_catches_a_leak_and_a_double_owner():
    pool, cache = make(num_pages=8)
    insert(cache, [1, 2])
    leaked = pool.alloc(1)
    with pytest.raises(AssertionError, match="leaked"):
        cache.check_integrity(owned_elsewhere=[])
    cache.check_integrity(owned_elsewhere=leaked)
    tree_page = cache.match_prefix([1]).pages[0]
    with pytest.raises(AssertionError):
        cache.check_integrity(owned_elsewhere=leaked + [tree_page])


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_a_long_edge_matches_up_to_the_page_where_it_diverges(page_size):
    edge = list(range(1000, 1300))
    pool = PagePool(400, page_size)
    cache = RadixCache(pool)
    cache.insert(edge, pool.alloc(len(edge) // page_size))
    for at in range(len(edge) + 1):
        key = edge[:at] + [7] * 20
        expected = min(at, len(key) // page_size * page_size) // page_size * page_size
        assert cache.prefix_len(key) == expected, at
        assert cache.match_prefix(key, touch=False).length == expected, at
