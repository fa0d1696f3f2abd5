"""Speedup of the radix cache against the mean prefix-overlap ratio (overlap_sweep.ipynb).

For each overlap ratio r, overlap_workload(r) gives prompts whose first r x prompt_len tokens are
shared within their group. The same requests run offline (all at t = 0) with the cache on and off;
speedup = throughput(on) / throughput(off). The audit's Amdahl-style prediction treats the shared
fraction r as sped up by a factor s:

    speedup(r) = 1 / ((1 - r) + r / s)        (s = inf: the reused prefix is free)

fit_amdahl_s() finds the s that best matches a simulated curve.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsgl.sim import Simulator, offline

from experiments.workloads import overlap_workload


def amdahl(r: np.ndarray | float, s: float = float("inf")) -> np.ndarray | float:
    """1 / ((1 - r) + r / s)."""
    r = np.asarray(r, float)
    return 1.0 / ((1.0 - r) + (0.0 if np.isinf(s) else r / s))


def fit_amdahl_s(r: Sequence[float], speedup: Sequence[float]) -> float:
    """The s (>= 1) minimizing the squared error of 1/speedup = (1 - r) + r/s (linear in 1/s)."""
    r, y = np.asarray(r, float), 1.0 / np.asarray(speedup, float)
    inv_s = float(np.dot(r, y - (1.0 - r)) / np.dot(r, r))
    return float("inf") if inv_s <= 0 else max(1.0 / inv_s, 1.0)


def run_sweep(ratios: Sequence[float], output_lens: Sequence[int], cost: Any, *, num_groups: int = 8,
              per_group: int = 16, prompt_len: int = 512, seed: int = 0, **options: Any) -> list[dict]:
    """One row per (output_len, ratio): throughput, duration, mean TTFT and hit rate with the cache
    on and off, and speedup = duration(off) / duration(on). The pool holds every request at once
    unless options set max_total_tokens."""
    rows = []
    for out_len in output_lens:
        for r in ratios:
            wl = overlap_workload(r, num_groups=num_groups, per_group=per_group, prompt_len=prompt_len,
                                  output_len=out_len, seed=seed)
            pool = options.pop("max_total_tokens", None) or len(wl.requests) * (prompt_len + out_len + 16)
            res = {}
            for cache in ("on", "off"):
                sim = Simulator(cost, max_total_tokens=pool, disable_radix_cache=cache == "off", **options)
                res[cache] = sim.run(wl.requests, offline(len(wl.requests))).summary
            on, off = res["on"], res["off"]
            rows.append({"output_len": out_len, "overlap": r, "hit_rate": on["hit_rate"],
                         "possible_hit_rate": r * (per_group - 1) / per_group,
                         "duration_on_s": on["duration_s"], "duration_off_s": off["duration_s"],
                         "tok_per_s_on": on["total_tok_per_s"], "tok_per_s_off": off["total_tok_per_s"],
                         "ttft_mean_on": on["ttft_mean"], "ttft_mean_off": off["ttft_mean"],
                         "speedup": off["duration_s"] / on["duration_s"],
                         "prefill_tokens_on": on["prefill_tokens"], "prefill_tokens_off": off["prefill_tokens"]})
    return rows
