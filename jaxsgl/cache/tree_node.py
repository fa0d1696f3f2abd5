"""TreeNode: one edge of the radix tree (a run of whole pages of token ids)."""
from __future__ import annotations


class TreeNode:
    """A radix-tree node: `key` token ids stored in `pages` (len(key) == len(pages) * page_size).

    Children are keyed by the first page of their key (a tuple of page_size token ids).
    `lock_ref` counts the requests whose locked path runs through this node; a node
    with lock_ref == 0 is evictable once it becomes a leaf. The timestamps and
    counters are what eviction policies rank by.
    """

    __slots__ = ("key", "pages", "parent", "children", "lock_ref",
                 "last_access", "created_at", "hit_count", "priority", "node_id")

    def __init__(self, key: tuple[int, ...], pages: list[int], parent: TreeNode | None,
                 now: float, node_id: int) -> None:
        self.key = key
        self.pages = pages
        self.parent = parent
        self.children: dict[tuple[int, ...], TreeNode] = {}
        self.lock_ref = 0
        self.last_access = now
        self.created_at = now
        self.hit_count = 0
        self.priority = 0
        self.node_id = node_id  # creation order; a deterministic tie-breaker

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    @property
    def num_pages(self) -> int:
        return len(self.pages)

    def __repr__(self) -> str:
        return (f"TreeNode(id={self.node_id}, tokens={len(self.key)}, pages={self.pages[:4]}"
                f"{'...' if len(self.pages) > 4 else ''}, lock_ref={self.lock_ref})")
