"""Host-side KV cache bookkeeping (plain Python + numpy, never JAX).

PagePool hands out KV page indices; RadixCache maps token-id prefixes to pages
with ref-counted locks and policy-driven eviction (see docs/cache_and_scheduler.md).
"""
from jaxsgl.cache.eviction import (EvictionPolicy, eviction_policy_names, make_eviction_policy,
                                   register_eviction_policy)
from jaxsgl.cache.page_pool import PagePool
from jaxsgl.cache.radix_cache import CacheStats, InsertResult, MatchResult, RadixCache
from jaxsgl.cache.tree_node import TreeNode

__all__ = ["PagePool", "RadixCache", "MatchResult", "InsertResult", "CacheStats", "TreeNode",
           "EvictionPolicy", "register_eviction_policy", "make_eviction_policy", "eviction_policy_names"]
