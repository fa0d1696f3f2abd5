"""The SGLang paper's ablation of RadixAttention and the frontend, in the simulator (ablation.ipynb).

Each ablation removes one component from the full system (LPM schedule, radix cache, in-batch
prefix de-duplication, fork branches sent in parallel) and runs the same workload offline:

    full system            Engine defaults: schedule_policy "lpm", radix cache on, enable_prefix_dedup
    no cache               disable_radix_cache=True
    no tree structure      a flat table instead of the tree (FlatTableCache below): a request reuses
                           only a whole earlier entry (a prompt once prefilled, or a finished request's
                           prompt + output) that is a prefix of its prompt, never part of one, so
                           siblings that share only a few-shot prefix or a system prompt share nothing
    FCFS schedule          schedule_policy "fcfs"
    random schedule        schedule_policy "random"
    no frontend parallelism  every call of a program waits for the previous one (sequential_workload)
    no frontend hint       enable_prefix_dedup=False: forked branches that arrive together each
                           prefill their shared prefix (jaxsgl's frontend hint, and the scheduler's
                           de-duplication that stands in for it here, compute it once)

Only experiments code changes: the flat table is a RadixCache subclass plugged into a Simulator
subclass; the rest are Engine options or a rewritten workload. Host only, no JAX.

    rows = run_ablation([wl], cost, pool_tokens=None)
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxsgl.cache.page_pool import PagePool
from jaxsgl.cache.radix_cache import MatchResult, RadixCache
from jaxsgl.cache.tree_node import TreeNode
from jaxsgl.scheduler import Scheduler
from jaxsgl.scheduler.kv import ReqKV
from jaxsgl.scheduler.request import Req
from jaxsgl.sim import Simulator, offline

from experiments.workloads import Request, Workload

# workloads whose `group` is one program (its calls fork / chain); elsewhere every request is a program
PROGRAM_GROUPS = {"tree-of-thought", "llm-judge", "hellaswag", "multi-turn-chat", "react"}

ABLATIONS: dict[str, dict[str, Any]] = {
    "full system": {},
    "no cache": {"disable_radix_cache": True},
    "no tree structure": {"flat_table": True},
    "FCFS schedule": {"schedule_policy": "fcfs"},
    "random schedule": {"schedule_policy": "random"},
    "no frontend parallelism": {"sequential": True},
    "no frontend hint": {"enable_prefix_dedup": False},
}


class FlatTableCache(RadixCache):
    """A table of whole entries on top of the radix tree's storage: matches stop at the longest
    marked entry (mark()) that is a prefix of the key. Pages are still stored (and evicted) by the
    tree, so memory use is the tree's (optimistic for a table, which would store shared prefixes
    once per entry); only what can be reused changes."""

    def __init__(self, pool: PagePool, eviction_policy: str = "lru") -> None:
        super().__init__(pool, eviction_policy)
        self.entries: dict = {}  # page-level trie of entry keys; None key marks an entry's end

    def mark(self, key: Sequence[int]) -> None:
        """Make key (truncated to whole pages) an entry."""
        ps, node = self.page_size, self.entries
        for i in range(0, len(key) // ps * ps, ps):
            node = node.setdefault(tuple(key[i:i + ps]), {})
        node[None] = True

    def entry_len(self, key: Sequence[int], limit: int) -> int:
        """Length of the longest entry that is a prefix of key, at most `limit` tokens."""
        ps, node, best = self.page_size, self.entries, 0
        for i in range(0, limit // ps * ps, ps):
            node = node.get(tuple(key[i:i + ps]))
            if node is None:
                break
            if None in node:
                best = i + ps
        return best

    def lookup(self, key: Sequence[int]) -> tuple[TreeNode, int]:
        node, length = super().lookup(key)
        usable = self.entry_len(key, length)
        return (node, length) if usable == length else super().lookup(list(key[:usable]))

    def match_prefix(self, key: Sequence[int], *, touch: bool = True) -> MatchResult:
        usable = self.entry_len(key, super().lookup(key)[1])
        result = super().match_prefix(list(key[:usable]), touch=False)
        if touch:
            self.touch(result, len(key))
        return result


class FlatTableKV(ReqKV):
    """ReqKV that marks a request's cached key as an entry once its prompt is prefilled (not at
    the chunk boundaries of a chunked prefill)."""

    def cache_prefix(self, req: Req) -> None:
        super().cache_prefix(req)
        if req.kv_len >= len(req.prompt_ids):
            known = min(req.kv_len, req.seq_len - req.num_placeholders)
            self.cache.mark(req.all_ids[:known])  # type: ignore[attr-defined]


class AblationSimulator(Simulator):
    """Simulator with flat_table=True: the Scheduler runs over a FlatTableCache."""

    def __init__(self, cost: Any, *, flat_table: bool = False, **options: Any) -> None:
        super().__init__(cost, **options)
        self.flat_table = flat_table

    def make_scheduler(self, clock: Any) -> Scheduler:
        sched = super().make_scheduler(clock)
        if not self.flat_table:
            return sched
        pool = PagePool(sched.pool.capacity, sched.page_size)
        flat = Scheduler(FlatTableCache(pool, self.opts.radix_eviction_policy), sched.config, clock=clock)
        flat.kv = FlatTableKV(flat.cache)
        return flat


def program_of(wl: Workload, r: Request) -> str:
    """The program a call belongs to: its group where groups are programs, else itself."""
    return r.group if wl.name in PROGRAM_GROUPS else r.rid


def sequential_workload(wl: Workload) -> Workload:
    """No frontend parallelism: every call of a program waits for the program's previous call (in
    list order, where each call already follows the one it waits for)."""
    last: dict[str, str] = {}
    reqs = []
    for r in wl.requests:
        p = program_of(wl, r)
        reqs.append(Request(r.rid, r.prompt_ids, r.max_new_tokens, last.get(p, r.after), r.group))
        last[p] = r.rid
    return Workload(wl.name, reqs, wl.arrival_rate, dict(wl.meta))


def run_one(wl: Workload, cost: Any, ablation: Mapping[str, Any], **options: Any) -> dict:
    """Summary of one offline run of `wl` under one ablation (an ABLATIONS value)."""
    opts = dict(ablation)
    if opts.pop("sequential", False):
        wl = sequential_workload(wl)
    sim = AblationSimulator(cost, **{**options, **opts})
    res = sim.run(wl.requests, offline(sum(r.after is None for r in wl.requests)), outputs=wl.meta.get("outputs"))
    return res.summary


def run_ablation(workloads: Sequence[Workload], cost: Any, *, pools: Mapping[str, Any] | None = None,
                 ablations: Mapping[str, Mapping[str, Any]] = ABLATIONS, **options: Any) -> list[dict]:
    """One row per (workload, pool, ablation): throughput, hit rate, prefill tokens, TTFT/e2e, and
    throughput and hit rate relative to the full system. pools: label -> max_total_tokens, or
    label -> callable(workload) -> max_total_tokens (None: the simulator's default, 16384 tokens)."""
    rows = []
    for wl in workloads:
        for label, pool in (pools or {"default": None}).items():
            tokens = pool(wl) if callable(pool) else pool
            base: dict | None = None
            for name, abl in ablations.items():
                s = run_one(wl, cost, abl, max_total_tokens=tokens, **options)
                base = base or s
                rows.append({"workload": wl.name, "pool": label, "pool_tokens": tokens, "ablation": name,
                             "req_per_s": s["req_per_s"], "hit_rate": s["hit_rate"],
                             "prefill_tokens": s["prefill_tokens"], "steps": s["steps"],
                             "ttft_p50": s["ttft_p50"], "e2e_latency_p99": s["e2e_latency_p99"],
                             "evicted_pages": s["evicted_pages"], "retractions": s["retractions"],
                             "norm_throughput": s["req_per_s"] / base["req_per_s"],
                             "norm_hit_rate": s["hit_rate"] / base["hit_rate"] if base["hit_rate"] else float("nan")})
    return rows
