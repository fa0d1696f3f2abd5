"""Scheduling policies: in which order waiting requests are considered for admission.

A policy is one small class with a `name` and `order(waiting, cache)`; register it
with @register_schedule_policy and select it by name (SchedulerConfig.schedule_policy).
Policies only read the cache (RadixCache.lookup / prefix_len never mutate it).
Starvation bounds and in-batch prefix de-duplication live in the Scheduler, so a
policy can be as greedy as it likes.
"""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from jaxsgl.cache.radix_cache import RadixCache
from jaxsgl.cache.tree_node import TreeNode
from jaxsgl.scheduler.request import Req

_REGISTRY: dict[str, type[SchedulePolicy]] = {}


class SchedulePolicy:
    """Orders the waiting queue; the scheduler admits from the front."""

    name: ClassVar[str] = ""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        raise NotImplementedError


def register_schedule_policy(cls: type[SchedulePolicy]) -> type[SchedulePolicy]:
    """Class decorator: make `cls` selectable by `cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} needs a non-empty `name`")
    _REGISTRY[cls.name] = cls
    return cls


def make_schedule_policy(policy: str | SchedulePolicy, seed: int = 0) -> SchedulePolicy:
    if isinstance(policy, SchedulePolicy):
        return policy
    try:
        return _REGISTRY[policy](seed)
    except KeyError:
        raise ValueError(f"unknown schedule policy {policy!r}; registered: {sorted(_REGISTRY)}") from None


def schedule_policy_names() -> list[str]:
    return sorted(_REGISTRY)


def arrival_order(req: Req) -> tuple[float, int]:
    return (req.arrival_time or 0.0, req.seq_no)


@register_schedule_policy
class FCFS(SchedulePolicy):
    """First come, first served."""
    name = "fcfs"

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        return sorted(waiting, key=arrival_order)


@register_schedule_policy
class LongestPrefixMatch(SchedulePolicy):
    """Longest cached prefix first (SGLang's LPM); FCFS when the queue exceeds max_queue."""
    name = "lpm"
    max_queue = 2048

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        if len(waiting) > self.max_queue:
            return sorted(waiting, key=arrival_order)
        matched = {id(r): cache.prefix_len(r.cacheable_prefix()) for r in waiting}
        return sorted(waiting, key=lambda r: (-matched[id(r)], arrival_order(r)))


@register_schedule_policy
class DFSWeight(SchedulePolicy):
    """Depth-first walk of the radix tree, heaviest subtree (most waiting requests) first,
    deeper matches before shallower ones, so requests sharing a prefix are admitted together."""
    name = "dfs-weight"

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        at_node: dict[TreeNode, list[Req]] = {}
        weight: dict[TreeNode, int] = {}
        for req in sorted(waiting, key=arrival_order):
            node, _ = cache.lookup(req.cacheable_prefix())
            at_node.setdefault(node, []).append(req)
            walk: TreeNode | None = node
            while walk is not None:
                weight[walk] = weight.get(walk, 0) + 1
                walk = walk.parent
        ordered: list[Req] = []
        stack: list[tuple[TreeNode, bool]] = [(cache.root, False)]
        while stack:  # post-order: deeper (longer-matching) requests before their ancestors'
            node, expanded = stack.pop()
            if expanded:
                ordered.extend(at_node.get(node, ()))
                continue
            stack.append((node, True))
            kids = [c for c in node.children.values() if c in weight]
            kids.sort(key=lambda c: (weight[c], -c.node_id))  # heaviest popped first
            stack.extend((c, False) for c in kids)
        return ordered


@register_schedule_policy
class RandomOrder(SchedulePolicy):
    """Uniformly random order (seeded)."""
    name = "random"

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        return [waiting[i] for i in self.rng.permutation(len(waiting))]


@register_schedule_policy
class LongestOutputFirst(SchedulePolicy):
    """Largest remaining max_new_tokens first."""
    name = "lof"

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        return sorted(waiting, key=lambda r: (-r.remaining_new_tokens, arrival_order(r)))


@register_schedule_policy
class HighestPriorityFirst(SchedulePolicy):
    """Largest Req.priority first, then FCFS."""
    name = "priority"

    def order(self, waiting: list[Req], cache: RadixCache) -> list[Req]:
        return sorted(waiting, key=lambda r: (-r.priority, arrival_order(r)))
