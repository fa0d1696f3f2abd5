"""Eviction policies: which unlocked leaf of the radix tree to drop first.

A policy is one small class with a `name` and a `key(node)`; the leaf with the
*smallest* key is evicted first. Register it with @register_eviction_policy and
select it by name (RadixCache(eviction_policy="lru")). To add one, write a class
in its own file, decorate it, and import that file before building the cache:

    @register_eviction_policy
    class LargestFirst(EvictionPolicy):
        name = "largest-first"
        def key(self, node):
            return (-node.num_pages, node.last_access)
"""
from __future__ import annotations

from typing import Any, ClassVar

from jaxsgl.cache.tree_node import TreeNode

_REGISTRY: dict[str, type[EvictionPolicy]] = {}


class EvictionPolicy:
    """Ranks evictable leaves: smallest `key(node)` is evicted first."""

    name: ClassVar[str] = ""

    def key(self, node: TreeNode) -> Any:
        raise NotImplementedError


def register_eviction_policy(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
    """Class decorator: make `cls` selectable by `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    _REGISTRY[cls.name] = cls
    return cls


def make_eviction_policy(policy: str | EvictionPolicy) -> EvictionPolicy:
    """Instantiate a registered policy by name (an instance is returned as is)."""
    if isinstance(policy, EvictionPolicy):
        return policy
    try:
        return _REGISTRY[policy]()
    except KeyError:
        raise ValueError(f"unknown eviction policy {policy!r}; registered: {sorted(_REGISTRY)}") from None


def eviction_policy_names() -> list[str]:
    return sorted(_REGISTRY)


@register_eviction_policy
class LRU(EvictionPolicy):
    """Least recently used first (the default)."""
    name = "lru"

    def key(self, node: TreeNode) -> Any:
        return (node.last_access, node.node_id)


@register_eviction_policy
class LFU(EvictionPolicy):
    """Fewest prefix hits first; ties broken by least recent use."""
    name = "lfu"

    def key(self, node: TreeNode) -> Any:
        return (node.hit_count, node.last_access, node.node_id)


@register_eviction_policy
class FIFO(EvictionPolicy):
    """Oldest node first, however often it is used."""
    name = "fifo"

    def key(self, node: TreeNode) -> Any:
        return (node.created_at, node.node_id)


@register_eviction_policy
class MRU(EvictionPolicy):
    """Most recently used first (good for one-pass scans larger than the cache)."""
    name = "mru"

    def key(self, node: TreeNode) -> Any:
        return (-node.last_access, -node.node_id)


@register_eviction_policy
class Priority(EvictionPolicy):
    """Lowest request priority first (node.priority = max over inserting requests); then LRU."""
    name = "priority"

    def key(self, node: TreeNode) -> Any:
        return (node.priority, node.last_access, node.node_id)
