"""Plots of cache-hit traces: the same frames from the simulator (SimResult) and the Engine.

    req = res.request_frame(); steps = res.step_frame()
    hit_rate_over_time(req); ttft_cdf_by_match(req); queue_length(steps)

Each takes a DataFrame (REQUEST_COLUMNS, or Scheduler.trace_records() columns), draws on `ax`
(a new figure if None) and returns the Axes. matplotlib is imported on call. Nothing is mutated.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def _axes(ax: Any) -> Any:
    if ax is None:
        import matplotlib.pyplot as plt
        _, ax = plt.subplots(figsize=(6, 3.5))
    return ax


def hit_rate_over_time(requests: Any, window: int = 50, ax: Any = None, label: str | None = None) -> Any:
    """Cache hit rate (cached / prompt tokens) of the last `window` admitted requests, against
    admission time."""
    ax = _axes(ax)
    df = requests.dropna(subset=["admit_time"]).sort_values("admit_time")
    cached = df["cached_tokens"].rolling(window, min_periods=1).sum()
    prompt = df["prompt_tokens"].rolling(window, min_periods=1).sum()
    ax.plot(df["admit_time"], cached / prompt, label=label)
    ax.set(xlabel="admission time (s)", ylabel=f"hit rate (last {window} requests)", ylim=(0, 1.02))
    return ax


def ecdf(values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted values, fraction <= each) of the non-NaN values."""
    v = np.sort(np.asarray([x for x in values if x is not None and not np.isnan(x)], float))
    return v, np.arange(1, len(v) + 1) / max(len(v), 1)


def ttft_cdf_by_match(requests: Any, bins: Sequence[float] = (0.0, 0.25, 0.75, 1.0), column: str = "ttft",
                      ax: Any = None, log: bool = True) -> Any:
    """CDF of `column` (default TTFT) for requests grouped by match ratio (cached / prompt tokens)
    into [bins[i], bins[i+1]) (the last bin includes 1.0)."""
    ax = _axes(ax)
    edges = list(bins)
    for lo, hi in zip(edges, edges[1:]):
        last = hi == edges[-1]
        sel = requests[(requests["match_ratio"] >= lo) & ((requests["match_ratio"] <= hi) if last else
                                                          (requests["match_ratio"] < hi))]
        x, y = ecdf(sel[column].tolist())
        if len(x):
            ax.step(x, y, where="post", label=f"match {lo:.2f}-{hi:.2f} (n={len(x)})")
    ax.set(xlabel=f"{column} (s)", ylabel="fraction of requests", ylim=(0, 1.02))
    if log:
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    return ax


def queue_length(steps: Any, ax: Any = None, label: str | None = None, running: bool = True) -> Any:
    """Waiting requests (and, with running=True, running ones dashed) after each step, against time."""
    ax = _axes(ax)
    df = steps.dropna(subset=["end_time"])
    line, = ax.plot(df["end_time"], df["queue_len"], label=f"{label or ''} waiting".strip(), drawstyle="steps-post")
    if running:
        ax.plot(df["end_time"], df["num_running"], "--", color=line.get_color(), alpha=0.6,
                label=f"{label or ''} running".strip(), drawstyle="steps-post")
    ax.set(xlabel="time (s)", ylabel="requests")
    ax.legend(fontsize=8)
    return ax
