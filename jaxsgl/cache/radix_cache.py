"""RadixCache: token-id prefixes -> KV page indices (RadixAttention's tree, host only).

Every edge holds whole pages: with page_size > 1 only whole pages are shared, so
keys are matched and inserted in multiples of page_size tokens (a trailing
partial page is ignored). Children are keyed by their first page of token ids.

    root
     |- (1 2 3 4 | 5 6 7 8) pages [7, 2]        page_size = 4
     |     |- (9 9 9 9) pages [5]               "1..8 9 9 9 9" is cached in 3 pages
     |     '- (0 1 2 3 | 4 4 4 4) pages [1, 3]
     '- (8 8 8 8) pages [6]

Page ownership: a page is free (in the PagePool), owned by the tree (inserted,
not yet evicted), or owned by a caller (a request's private pages). Locking a
node pins the whole path from it to the root (ref-counted); evict() only drops
unlocked leaves, returning their pages to the pool.
"""
from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from jaxsgl.cache.eviction import EvictionPolicy, make_eviction_policy
from jaxsgl.cache.page_pool import PagePool
from jaxsgl.cache.tree_node import TreeNode


class MatchResult(NamedTuple):
    """A cached prefix: its pages in order, its last node (the lock handle), its length in tokens."""
    pages: list[int]
    node: TreeNode
    length: int


class InsertResult(NamedTuple):
    """Outcome of insert(key, pages).

    prefix_len:   tokens of key already cached before the call; the caller's pages for
                  them were NOT taken (free the ones you own: they duplicate the tree's).
    inserted_len: tokens newly stored; the tree now owns
                  pages[prefix_len // page_size : (prefix_len + inserted_len) // page_size].
    node:         the node ending at the (page-aligned) key; root if the key is empty.
    """
    prefix_len: int
    inserted_len: int
    node: TreeNode


@dataclass
class CacheStats:
    """Counters since construction (or reset_stats())."""
    lookups: int = 0
    query_tokens: int = 0
    hit_tokens: int = 0
    inserted_pages: int = 0
    evicted_pages: int = 0
    evicted_nodes: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


class RadixCache:
    """Radix tree over token ids whose values are KV page indices taken from `pool`.

    disable=True turns the cache off for ablations: match_prefix finds nothing and
    insert stores nothing (callers then free all their pages themselves).
    clock: returns the current time for access/creation stamps; default is a
    logical counter (deterministic, strictly increasing).
    """

    def __init__(self, pool: PagePool, eviction_policy: str | EvictionPolicy = "lru", *,
                 disable: bool = False, clock: Callable[[], float] | None = None) -> None:
        self.pool = pool
        self.page_size = pool.page_size
        self.policy = make_eviction_policy(eviction_policy)
        self.enabled = not disable
        counter = itertools.count(1)
        self.clock: Callable[[], float] = clock or (lambda: float(next(counter)))
        self._ids = itertools.count()
        self.root = TreeNode((), [], None, self.clock(), next(self._ids))
        self.evictable_pages = 0  # pages in nodes with lock_ref == 0
        self.locked_pages = 0     # pages in nodes with lock_ref > 0
        self._evictable_leaves: set[TreeNode] = set()
        self.stats = CacheStats()

    # ------------------------------------------------------------------ queries
    @property
    def cached_pages(self) -> int:
        """Pages the tree owns (evictable + locked)."""
        return self.evictable_pages + self.locked_pages

    def lookup(self, key: Sequence[int]) -> tuple[TreeNode, int]:
        """Read-only: (deepest node the match reaches, matched tokens). The match may end
        inside the returned node. Mutates nothing (used by scheduling policies)."""
        if not self.enabled:
            return self.root, 0
        node, length, partial = self._walk(tuple(key))
        return node, length

    def prefix_len(self, key: Sequence[int]) -> int:
        """Read-only: length of the longest cached page-aligned prefix of key."""
        return self.lookup(key)[1]

    def path_pages(self, node: TreeNode) -> list[int]:
        """Pages on the path root -> node, in token order."""
        chunks = []
        while node.parent is not None:
            chunks.append(node.pages)
            node = node.parent
        return [p for chunk in reversed(chunks) for p in chunk]

    def match_prefix(self, key: Sequence[int], *, touch: bool = True) -> MatchResult:
        """Longest cached page-aligned prefix of key.

        Mutates: splits the node where the match ends mid-edge (so the returned node
        ends exactly at the match and can be locked); with touch=True also updates
        last_access / hit_count on the path and the hit statistics (see touch()).
        """
        key = tuple(key)
        if not self.enabled:
            result = MatchResult([], self.root, 0)
        else:
            node, length, partial = self._walk(key)
            if partial:
                node = self._split(node, partial)
            result = MatchResult(self.path_pages(node), node, length)
        if touch:
            self.touch(result, len(key))
        return result

    def touch(self, match: MatchResult, query_len: int) -> None:
        """Record a use of `match` for a lookup of query_len tokens.

        Mutates: last_access = now and hit_count += 1 on the path; stats counters."""
        self.stats.lookups += 1
        self.stats.query_tokens += query_len
        self.stats.hit_tokens += match.length
        now = self.clock()
        node = match.node
        while node.parent is not None:
            node.last_access = now
            node.hit_count += 1
            node = node.parent

    # ---------------------------------------------------------------- mutation
    def insert(self, key: Sequence[int], pages: Sequence[int], *, priority: int = 0) -> InsertResult:
        """Store key (truncated to whole pages) with pages[i] holding tokens [i*ps, (i+1)*ps).

        Mutates: may split one node, adds at most one leaf (lock_ref 0, so evictable),
        takes ownership of the pages for the new suffix (see InsertResult), updates
        last_access and raises priority to at least `priority` along the path.
        """
        if not self.enabled:
            return InsertResult(0, 0, self.root)
        ps = self.page_size
        n = len(key) // ps * ps
        key = tuple(key[:n])
        if len(pages) < n // ps:
            raise ValueError(f"{len(pages)} pages cannot hold {n} tokens with page_size {ps}")
        node, prefix_len, partial = self._walk(key)
        if partial:
            node = self._split(node, partial)
        now = self.clock()
        if prefix_len < n:
            leaf = TreeNode(key[prefix_len:], list(pages[prefix_len // ps:n // ps]), node, now, next(self._ids))
            node.children[leaf.key[:ps]] = leaf
            self.evictable_pages += leaf.num_pages
            self.stats.inserted_pages += leaf.num_pages
            self._evictable_leaves.discard(node)
            self._evictable_leaves.add(leaf)
            node = leaf
        walk = node
        while walk.parent is not None:
            walk.last_access = now
            walk.priority = max(walk.priority, priority)
            walk = walk.parent
        return InsertResult(prefix_len, n - prefix_len, node)

    def lock(self, node: TreeNode) -> None:
        """Pin node and its ancestors (lock_ref += 1 on the path); locked pages are never evicted."""
        walk = node
        while walk.parent is not None:
            if walk.lock_ref == 0:
                self.evictable_pages -= walk.num_pages
                self.locked_pages += walk.num_pages
            walk.lock_ref += 1
            walk = walk.parent
        self._evictable_leaves.discard(node)

    def unlock(self, node: TreeNode) -> None:
        """Undo one lock(node) (lock_ref -= 1 on the path). Raises if the node is not locked."""
        walk = node
        while walk.parent is not None:
            if walk.lock_ref <= 0:
                raise ValueError(f"unlock of an unlocked node {walk}")
            walk.lock_ref -= 1
            if walk.lock_ref == 0:
                self.evictable_pages += walk.num_pages
                self.locked_pages -= walk.num_pages
            walk = walk.parent
        self._refresh_leaf(node)

    def evict(self, num_pages: int) -> int:
        """Free at least num_pages pages (if that many are evictable) by dropping unlocked
        leaves in policy order; a parent left childless and unlocked becomes a candidate.

        Mutates: removes nodes, returns their pages to the pool, updates stats.
        Returns the number of pages freed (whole leaves, so possibly more than asked).
        """
        if num_pages <= 0:
            return 0
        heap = [(self.policy.key(leaf), leaf.node_id, leaf) for leaf in self._evictable_leaves]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None and leaf.lock_ref == 0 and not leaf.children
            del parent.children[leaf.key[:self.page_size]]
            self._evictable_leaves.discard(leaf)
            self.pool.free(leaf.pages)
            freed += leaf.num_pages
            self.evictable_pages -= leaf.num_pages
            self.stats.evicted_pages += leaf.num_pages
            self.stats.evicted_nodes += 1
            leaf.parent = None
            if parent.parent is not None and not parent.children and parent.lock_ref == 0:
                self._evictable_leaves.add(parent)
                heapq.heappush(heap, (self.policy.key(parent), parent.node_id, parent))
        return freed

    def evict_all(self) -> int:
        """Evict every unlocked node; returns pages freed."""
        return self.evict(self.evictable_pages)

    def reset_stats(self) -> None:
        self.stats = CacheStats()

    # ---------------------------------------------------------------- internal
    def _walk(self, key: tuple[int, ...]) -> tuple[TreeNode, int, int]:
        """(node, matched_len, partial): partial > 0 means the match ends `partial`
        tokens into `node`'s edge; 0 means it ends exactly at `node`."""
        ps = self.page_size
        n = len(key) // ps * ps
        node, pos = self.root, 0
        while pos < n:
            child = node.children.get(key[pos:pos + ps])
            if child is None:
                break
            m = self._common_len(child.key, key, pos, n)
            if m < len(child.key):
                return child, pos + m, m
            node, pos = child, pos + m
        return node, pos, 0

    def _common_len(self, edge: tuple[int, ...], key: tuple[int, ...], pos: int, end: int) -> int:
        """Whole-page length of the common prefix of edge and key[pos:end] (>= 1 page here)."""
        limit = min(len(edge), end - pos)
        if key[pos:pos + limit] == edge[:limit]:
            return limit
        # key matches edge on [0, lo) (the first page through the children dict) and
        # differs somewhere in [lo, hi): bisect with slice compares, then step.
        lo, hi = self.page_size, limit
        while hi - lo > 16:
            mid = (lo + hi) // 2
            if key[pos + lo:pos + mid] == edge[lo:mid]:
                lo = mid
            else:
                hi = mid
        while lo < hi and key[pos + lo] == edge[lo]:
            lo += 1
        return lo // self.page_size * self.page_size

    def _split(self, node: TreeNode, at: int) -> TreeNode:
        """Cut node's edge after `at` tokens; returns the new upper node (same lock_ref/stats)."""
        ps = self.page_size
        parent = node.parent
        assert parent is not None and 0 < at < len(node.key) and at % ps == 0
        head = TreeNode(node.key[:at], node.pages[:at // ps], parent, node.created_at, next(self._ids))
        head.lock_ref, head.last_access = node.lock_ref, node.last_access
        head.hit_count, head.priority = node.hit_count, node.priority
        node.key, node.pages, node.parent = node.key[at:], node.pages[at // ps:], head
        head.children[node.key[:ps]] = node
        parent.children[head.key[:ps]] = head
        return head

    def _refresh_leaf(self, node: TreeNode) -> None:
        if node.parent is not None and not node.children and node.lock_ref == 0:
            self._evictable_leaves.add(node)
        else:
            self._evictable_leaves.discard(node)

    # --------------------------------------------------------------- integrity
    def check_integrity(self, owned_elsewhere: Iterable[int] | None = None) -> None:
        """Raise AssertionError unless the tree and the pool agree.

        Always: edges are whole pages, children keyed by first page, lock counts
        consistent, counters match, tree pages distinct and not free. With
        owned_elsewhere (the pages callers hold privately): free + evictable +
        locked + owned_elsewhere == pool capacity, with no page counted twice.
        """
        self.pool.check_integrity()
        ps = self.page_size
        seen: set[int] = set()
        evictable = locked = 0
        stack = [self.root]
        while stack:
            node = stack.pop()
            child_locks = 0
            for first, child in node.children.items():
                assert child.parent is node, f"{child} has a wrong parent"
                assert child.key[:ps] == first, f"{child} is filed under the wrong first page"
                assert len(child.key) > 0 and len(child.key) == child.num_pages * ps, f"{child}: key/pages mismatch"
                child_locks += child.lock_ref
                stack.append(child)
            if node.parent is None:
                continue
            assert node.lock_ref >= child_locks, f"{node}: lock_ref below its children's"
            for p in node.pages:
                assert p not in seen, f"page {p} appears twice in the tree"
                assert not self.pool.is_free(p), f"tree page {p} is also free"
                seen.add(p)
            if node.lock_ref == 0:
                evictable += node.num_pages
            else:
                locked += node.num_pages
            is_candidate = not node.children and node.lock_ref == 0
            assert (node in self._evictable_leaves) == is_candidate, f"{node}: evictable-leaf set is stale"
        assert evictable == self.evictable_pages, f"evictable {self.evictable_pages} != {evictable} in tree"
        assert locked == self.locked_pages, f"locked {self.locked_pages} != {locked} in tree"
        if owned_elsewhere is not None:
            owned = list(owned_elsewhere)
            owned_set = set(owned)
            assert len(owned_set) == len(owned), "a privately owned page is listed twice"
            assert not owned_set & seen, f"pages owned privately and by the tree: {sorted(owned_set & seen)[:8]}"
            assert not any(self.pool.is_free(p) for p in owned), "a privately owned page is free"
            total = self.pool.num_free + evictable + locked + len(owned)
            assert total == self.pool.capacity, (
                f"free {self.pool.num_free} + evictable {evictable} + locked {locked} + private {len(owned)} "
                f"= {total} != {self.pool.capacity} pages: leaked pages")
