"""Arrival processes: the time (seconds) at which each root request of a workload is submitted.

    offline(n)                    every request at t = 0 (the paper's offline benchmarks)
    poisson(n, rate, seed=0)      exponential inter-arrival times, `rate` requests/s (seeded)
    gamma(n, rate, cv, seed=0)    bursty (cv > 1) or regular (cv < 1) arrivals with the same mean rate
    from_trace(times, rate=None)  recorded arrival times, shifted to start at 0, optionally rescaled
                                  to a new mean rate

Requests that wait for another one (`after`) are not in these lists: they arrive when the request
they wait for finishes (plus the simulator's think_time). Host only.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def offline(n: int) -> list[float]:
    """n arrivals at t = 0."""
    return [0.0] * n


def poisson(n: int, rate: float, seed: int = 0, start: float = 0.0) -> list[float]:
    """n Poisson arrivals at `rate` per second; the first one at `start` + its inter-arrival gap."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, n)
    return (start + np.cumsum(gaps)).tolist()


def gamma(n: int, rate: float, cv: float = 1.0, seed: int = 0, start: float = 0.0) -> list[float]:
    """n arrivals whose gaps are gamma-distributed with mean 1/rate and coefficient of variation
    cv (cv = 1 is Poisson; cv > 1 bursty)."""
    if rate <= 0 or cv <= 0:
        raise ValueError(f"rate and cv must be > 0, got {rate}, {cv}")
    shape = 1.0 / cv ** 2
    gaps = np.random.default_rng(seed).gamma(shape, 1.0 / (rate * shape), n)
    return (start + np.cumsum(gaps)).tolist()


def from_trace(times: Sequence[float], rate: float | None = None) -> list[float]:
    """Recorded arrival times, sorted and shifted to start at 0; with `rate`, rescaled so the
    mean rate over the trace is `rate` per second."""
    t = np.sort(np.asarray(times, float))
    if t.size == 0:
        return []
    t -= t[0]
    if rate is not None and t.size > 1 and t[-1] > 0:
        t *= (t.size - 1) / rate / t[-1]
    return t.tolist()
