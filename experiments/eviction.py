"""Eviction policies across KV pool sizes, with time (eviction.ipynb).

The SGLang authors, asked by a reviewer for LRU against LFU, found LRU slightly better on MMLU,
tree-of-thought and multi-turn chat. run_grid() replays each workload offline (every root request
at t = 0, chained calls when their predecessor finishes) through the simulator for every eviction
policy and pool size, and reports hit rate, prefill tokens computed, evictions and throughput.
The pool is a fraction of the workload's distinct tokens (prompts and outputs: both are cached).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jaxsgl.sim import Simulator, offline

from experiments.workloads import Workload, unique_prompt_tokens

EVICTIONS = ["lru", "lfu", "fifo", "mru", "priority"]


def distinct_tokens(wl: Workload) -> int:
    """Tokens in the trie of every prompt + its output (what an infinite cache would hold)."""
    outs = wl.meta.get("outputs", {})
    return unique_prompt_tokens([r.prompt_ids + list(outs.get(r.rid, ())) for r in wl.requests])


def pool_for(wl: Workload, frac: float, page_size: int = 16, max_running: int = 64) -> int:
    """frac x distinct tokens in whole pages, raised so the largest request fits with headroom."""
    want = -(-int(frac * distinct_tokens(wl)) // page_size)
    least = -(-wl.max_request_tokens // page_size) + 2
    return max(want, least) * page_size


def run_grid(workloads: Sequence[Workload], cost: Any, *, evictions: Sequence[str] = EVICTIONS,
             pool_fracs: Sequence[float] = (0.1, 0.2, 0.3, 0.5), schedules: Sequence[str] = ("lpm",),
             **options: Any) -> list[dict]:
    """One row per (workload, schedule, pool fraction, eviction policy)."""
    rows = []
    for wl in workloads:
        n_roots = sum(r.after is None for r in wl.requests)
        outs = wl.meta.get("outputs")
        for sched in schedules:
            for frac in pool_fracs:
                pool = pool_for(wl, frac, options.get("page_size", 16))
                for ev in evictions:
                    sim = Simulator(cost, max_total_tokens=pool, radix_eviction_policy=ev, schedule_policy=sched,
                                    **options)
                    res = sim.run(wl.requests, offline(n_roots), outputs=outs)
                    s = res.summary
                    rows.append({"workload": wl.name, "schedule": sched, "pool_frac": frac, "pool_tokens": pool,
                                 "eviction": ev, "hit_rate": s["hit_rate"], "prefill_tokens": s["prefill_tokens"],
                                 "evicted_pages": s["evicted_pages"], "retractions": s["retractions"],
                                 "duration_s": s["duration_s"], "req_per_s": s["req_per_s"],
                                 "ttft_p50": s["ttft_p50"], "ttft_p99": s["ttft_p99"]})
    return rows
