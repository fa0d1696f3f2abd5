"""ReqKV: moves KV pages between requests, the PagePool and the RadixCache.

The only code that changes a request's pages or lock. Ownership rules:
  - admit:   the cached prefix is locked for the request (tree-owned, pinned);
  - grow:    new private pages come from the pool (evicting unlocked leaves if short);
  - cache:   after a prefill chunk the computed whole pages are inserted; pages that
             duplicate what is already cached are freed and replaced by the tree's;
  - release: insert what was computed (or not), free private pages, unlock.
"""
from __future__ import annotations

from jaxsgl.cache.radix_cache import MatchResult, RadixCache
from jaxsgl.scheduler.request import Req


class ReqKV:
    """Page bookkeeping for requests on top of one RadixCache (and its PagePool)."""

    def __init__(self, cache: RadixCache) -> None:
        self.cache = cache
        self.pool = cache.pool
        self.page_size = cache.page_size

    def available_pages(self) -> int:
        """Pages obtainable right now: free + evictable."""
        return self.pool.num_free + self.cache.evictable_pages

    def probe(self, req: Req) -> MatchResult:
        """Find req's cached prefix without touching access stats (may split a node)."""
        return self.cache.match_prefix(req.cacheable_prefix(), touch=False)

    def attach(self, req: Req, match: MatchResult) -> None:
        """Give a waiting request the cached prefix `match`: lock it, set pages and kv_len.
        (Access stats are left alone: call cache.touch once the request is admitted.)"""
        assert req.lock_node is None and not req.pages, f"{req} already holds KV"
        self.cache.lock(match.node)
        req.lock_node = match.node
        req.pages = list(match.pages)
        req.num_tree_pages = len(match.pages)
        req.kv_len = match.length

    def detach_unused(self, req: Req) -> None:
        """Undo attach() for a request that ended up not admitted (it owns no private pages)."""
        assert req.num_tree_pages == len(req.pages)
        self._unlock(req)
        req.pages, req.num_tree_pages, req.kv_len = [], 0, 0

    def ensure_pages(self, req: Req, num_tokens: int) -> bool:
        """Grow req.pages to hold num_tokens tokens, evicting if the pool is short.
        Returns False (allocating nothing) if not enough pages can be found."""
        need = self.pool.pages_for(num_tokens) - len(req.pages)
        if need <= 0:
            return True
        if self.pool.num_free < need:
            self.cache.evict(need - self.pool.num_free)
        pages = self.pool.alloc(need)
        if pages is None:
            return False
        req.pages.extend(pages)
        return True

    def cache_prefix(self, req: Req) -> None:
        """Insert req's computed whole pages of known tokens into the tree and move its lock
        to the new end.

        Mutates the tree (insert), the pool (frees duplicate pages) and req.pages /
        num_tree_pages / lock_node. No-op when the cache is disabled."""
        if not self.cache.enabled:
            return
        ps = self.page_size
        known = min(req.kv_len, req.seq_len - req.num_placeholders)  # never an overlap placeholder
        res = self.cache.insert(req.all_ids[:known], req.pages, priority=req.priority)
        dup_end = res.prefix_len // ps
        if dup_end > req.num_tree_pages:  # someone cached these tokens first: use their pages
            self.pool.free(req.pages[req.num_tree_pages:dup_end])
        new_tree_pages = (res.prefix_len + res.inserted_len) // ps
        if new_tree_pages > req.num_tree_pages:
            req.pages[:new_tree_pages] = self.cache.path_pages(res.node)
            self.cache.lock(res.node)
            self._unlock(req)
            req.lock_node = res.node
            req.num_tree_pages = new_tree_pages

    def release(self, req: Req, *, insert: bool = True) -> None:
        """Drop all of req's KV: insert the computed part into the cache (if insert and
        enabled), free the private rest, unlock. Leaves req with no pages and kv_len 0."""
        if insert:
            self.cache_prefix(req)
        self.pool.free(req.private_pages())
        self._unlock(req)
        req.pages, req.num_tree_pages, req.kv_len = [], 0, 0

    def _unlock(self, req: Req) -> None:
        if req.lock_node is not None:
            self.cache.unlock(req.lock_node)
            req.lock_node = None
