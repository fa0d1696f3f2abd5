"""Property test: RadixCache vs a naive reference (the set of cached page-aligned prefixes).

The reference maps every cached whole-page prefix (a tuple of token ids) to the
page holding its last page of tokens. insert adds all prefixes of a key; match is
the longest prefix present; evict removes the prefixes whose pages the tree freed,
and we check that what went is a set of whole subtrees (leaf eviction), never a
prefix of a locked sequence, and at least what was asked for when possible.
"""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxsgl.cache import PagePool, RadixCache, eviction_policy_names

keys = st.lists(st.integers(0, 2), max_size=12)
ops = st.lists(st.one_of(
    st.tuples(st.just("insert"), keys),
    st.tuples(st.just("match"), keys),
    st.tuples(st.just("lock"), keys),
    st.tuples(st.just("unlock"), st.integers(0, 7)),
    st.tuples(st.just("evict"), st.integers(1, 8)),
), max_size=60)


class Reference:
    def __init__(self, page_size: int):
        self.ps = page_size
        self.page_of: dict[tuple[int, ...], int] = {}  # cached prefix -> page of its last page

    def prefixes(self, key):
        return [tuple(key[:i]) for i in range(self.ps, len(key) // self.ps * self.ps + 1, self.ps)]

    def match(self, key) -> int:
        length = 0
        for p in self.prefixes(key):
            if p not in self.page_of:
                break
            length = len(p)
        return length

    def pages(self, key, length):
        return [self.page_of[tuple(key[:i])] for i in range(self.ps, length + 1, self.ps)]


def evict_and_check(cache, ref, locks, n):
    """Evict n pages; check that whole unlocked subtrees went; update the reference."""
    evictable = cache.evictable_pages
    freed = cache.evict(n)
    gone = {p for p, page in ref.page_of.items() if cache.pool.is_free(page)}
    assert len(gone) == freed
    for p in gone:  # whole subtrees only
        assert all(q in gone for q in ref.page_of if q[:len(p)] == p)
    for _, locked in locks:  # never a locked token
        assert not any(locked[:len(p)] == p for p in gone)
    assert freed >= min(n, evictable)
    for p in gone:
        del ref.page_of[p]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_size=st.sampled_from([1, 2, 3]), policy=st.sampled_from(eviction_policy_names()),
       num_pages=st.integers(4, 24), ops=ops)
def test_radix_cache_agrees_with_reference(page_size, policy, num_pages, ops):
    pool = PagePool(num_pages, page_size)
    cache = RadixCache(pool, policy)
    ref = Reference(page_size)
    locks: list[tuple[object, tuple[int, ...]]] = []  # (node, locked prefix)
    for op, arg in ops:
        if op == "insert":
            n = len(arg) // page_size
            if pool.num_free < n:
                evict_and_check(cache, ref, locks, n - pool.num_free)
            pages = pool.alloc(n)
            if pages is None:
                continue
            expected_prefix = ref.match(arg)
            res = cache.insert(arg, pages)
            assert res.prefix_len == expected_prefix
            assert res.prefix_len + res.inserted_len == n * page_size
            pool.free(pages[:res.prefix_len // page_size])  # duplicates stay ours
            for i, p in enumerate(ref.prefixes(arg)):
                ref.page_of.setdefault(p, pages[i])
        elif op in ("match", "lock"):
            m = cache.match_prefix(arg)
            assert m.length == ref.match(arg)
            assert m.pages == ref.pages(arg, m.length)
            if op == "lock":
                cache.lock(m.node)
                locks.append((m.node, tuple(arg[:m.length])))
        elif op == "unlock" and locks:
            node, _ = locks.pop(arg % len(locks))
            cache.unlock(node)
        elif op == "evict":
            evict_and_check(cache, ref, locks, arg)
        cache.check_integrity(owned_elsewhere=[])
        assert cache.locked_pages == len({p for _, k in locks for p in ref.prefixes(k)})
    for node, _ in locks:
        cache.unlock(node)
    assert cache.locked_pages == 0
    cache.evict_all()
    assert pool.num_free == pool.capacity
