"""Scheduler-wide invariant check (cheap enough to run after every step in tests)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from jaxsgl.cache.radix_cache import RadixCache
from jaxsgl.scheduler.request import PLACEHOLDER, Req, ReqStatus


def check_scheduler_integrity(cache: RadixCache, running: Sequence[Req], waiting: Sequence[Req],
                              requests: Mapping[str, Req], max_running_requests: int) -> None:
    """Raise AssertionError unless requests, locks, the tree and the pool agree:
    free + evictable + locked + private pages == capacity, every lock_ref is
    explained by a running request, waiting requests hold nothing, and the
    request tables agree."""
    private: list[int] = []
    expected_locks: dict[int, int] = {}
    for req in running:
        assert req.status == ReqStatus.RUNNING and req.lock_node is not None, f"{req} is not properly running"
        assert req.kv_len <= req.seq_len, f"{req}: KV beyond its tokens"
        assert cache.path_pages(req.lock_node) == req.pages[:req.num_tree_pages], f"{req}: tree pages differ"
        assert len(req.pages) * cache.page_size >= req.kv_len, f"{req}: pages do not cover its KV"
        private.extend(req.private_pages())
        node = req.lock_node
        while node.parent is not None:
            expected_locks[id(node)] = expected_locks.get(id(node), 0) + 1
            node = node.parent
    cache.check_integrity(owned_elsewhere=private)
    stack = list(cache.root.children.values())
    while stack:
        node = stack.pop()
        assert node.lock_ref == expected_locks.get(id(node), 0), f"{node}: lock_ref without a running owner"
        assert min(node.key) >= 0, f"{node}: the tree holds a placeholder id"
        stack.extend(node.children.values())
    for req in waiting:
        assert req.status == ReqStatus.WAITING and not req.pages and req.lock_node is None and req.kv_len == 0, \
            f"waiting {req} holds KV"
    for req in requests.values():
        known = req.num_generated
        assert 0 <= known and all(t == PLACEHOLDER for t in req.output_ids[known:]) \
            and PLACEHOLDER not in req.output_ids[:known], f"{req}: placeholders not at the end"
    live = {id(r) for r in waiting} | {id(r) for r in running}
    assert len(live) == len(waiting) + len(running) == len(requests), "request lists disagree"
    assert all(id(r) in live for r in requests.values()), "a live request is in no queue"
    assert len(running) <= max_running_requests
