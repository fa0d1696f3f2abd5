"""Does cache-aware scheduling starve low-match requests? (fairness.ipynb)

Requests share one of many prefixes with Zipfian or near-uniform popularity; the KV pool holds only
a fraction of the prefixes (cache pressure). Each schedule runs the same requests twice through the
simulator: offline (all at t = 0: its throughput) and with Poisson arrivals at a given load (its
TTFT by request class). "hot" requests use one of the most popular prefixes (together half of all
requests), "cold" ones the rest: the class does not depend on the schedule, unlike the realized
match ratio (also reported).

    rows, runs = run_fairness(wl, cost, policies(512, step_s), pool_tokens=8192, rates=[0.5])
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxsgl.scheduler.policies.aging import LPMAging
from jaxsgl.sim import SimResult, Simulator, offline, poisson

from experiments.workloads import Workload


def policies(prefix_len: int, step_s: float, *, aging_steps: Sequence[int] = (100,)) -> dict[str, dict]:
    """Schedules to compare, as Engine options. lpm-aging's alpha is set so that waiting
    `aging_steps` decode steps (of step_s seconds) is worth as much as a full prefix match."""
    out: dict[str, dict] = {
        "fcfs": {"schedule_policy": "fcfs", "max_wait_steps": None},
        "lpm": {"schedule_policy": "lpm", "max_wait_steps": None},
        "dfs-weight": {"schedule_policy": "dfs-weight", "max_wait_steps": None},
        "lpm + bound 1000 (default)": {"schedule_policy": "lpm", "max_wait_steps": 1000},
        "lpm + bound 100": {"schedule_policy": "lpm", "max_wait_steps": 100},
    }
    for k in aging_steps:
        out[f"lpm-aging ({k} steps)"] = {"schedule_policy": LPMAging(alpha=prefix_len / (k * step_s)),
                                         "max_wait_steps": None}
    return out


def hot_groups(workload: Workload, share: float = 0.5) -> set[str]:
    """The most popular groups (prefixes) that together hold at least `share` of the requests."""
    counts: dict[str, int] = {}
    for r in workload.requests:
        counts[r.group] = counts.get(r.group, 0) + 1
    hot, total = set(), 0
    for g, c in sorted(counts.items(), key=lambda gc: -gc[1]):
        if total >= share * len(workload.requests):
            break
        hot.add(g)
        total += c
    return hot


def _q(x: Sequence[float], q: float) -> float:
    return float(np.quantile(x, q)) if len(x) else float("nan")


def class_stats(res: SimResult, workload: Workload, hot: set[str]) -> dict[str, float]:
    """TTFT quantiles of hot / cold requests (by prefix popularity) and of low / high realized match."""
    group = {r.rid: r.group for r in workload.requests}
    out: dict[str, float] = {}
    classes = {"hot": lambda r: group[r["rid"]] in hot, "cold": lambda r: group[r["rid"]] not in hot,
               "low-match": lambda r: r["match_ratio"] < 0.5, "high-match": lambda r: r["match_ratio"] >= 0.5}
    for name, pick in classes.items():
        ttft = [r["ttft"] for r in res.requests if pick(r)]
        out[f"n_{name}"] = len(ttft)
        out[f"ttft_p50_{name}"] = _q(ttft, 0.5)
        out[f"ttft_p99_{name}"] = _q(ttft, 0.99)
    return out


def run_fairness(workload: Workload, cost: Any, schedules: Mapping[str, dict], *, pool_tokens: int,
                 rates: Sequence[float], seed: int = 0, **options: Any) -> tuple[list[dict], dict]:
    """One row per (schedule, rate): offline throughput and hit rate, and at that Poisson rate the
    throughput (requests / first arrival to last finish), the TTFT classes (class_stats), overall
    TTFT/e2e quantiles and the run's duration. Returns (rows,
    runs) with runs[(schedule, rate)] the SimResult (rate None: the offline run)."""
    hot = hot_groups(workload)
    rows, runs = [], {}
    n = len(workload.requests)
    for label, opts in schedules.items():
        sim = Simulator(cost, max_total_tokens=pool_tokens, **{**options, **opts})
        off = sim.run(workload.requests, offline(n))
        runs[(label, None)] = off
        for rate in rates:
            res = sim.run(workload.requests, poisson(n, rate, seed=seed))
            runs[(label, rate)] = res
            s = res.summary
            rows.append({"workload": workload.name, "schedule": label, "rate": rate,
                         "offline_req_per_s": off.summary["req_per_s"],
                         "offline_tok_per_s": off.summary["total_tok_per_s"],
                         "offline_hit_rate": off.summary["hit_rate"], "hit_rate": s["hit_rate"],
                         "req_per_s": s["req_per_s"],
                         "ttft_p50": s["ttft_p50"], "ttft_p99": s["ttft_p99"], "e2e_p99": s["e2e_latency_p99"],
                         "duration_s": s["duration_s"], **class_stats(res, workload, hot)})
    return rows, runs
