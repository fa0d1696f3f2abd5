"""Summary metrics of a run from its per-request and per-step records (simulated or measured).

Works on the plain record lists (REQUEST_COLUMNS dicts, trace_records() dicts), so the same
function summarizes a simulation and an engine run. Host only: numpy.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _q(values: Sequence[float | None], q: float) -> float:
    v = [x for x in values if x is not None]
    return float(np.quantile(v, q)) if v else float("nan")


def summarize(requests: Sequence[Mapping[str, Any]], steps: Sequence[Mapping[str, Any]],
              scheduler: Any = None) -> dict[str, float]:
    """Throughput, latency quantiles, hit rate and step counts of one run.

    duration: first arrival to last finish (s). Throughputs are per second of duration. hit_rate:
    cached / prompt tokens of the requests (each counted at its first admission). ttft/e2e/wait
    quantiles are in seconds. `scheduler` (optional) adds evictions and retractions."""
    arrivals = [r["arrival_time"] for r in requests]
    finishes = [r["finish_time"] for r in requests if r["finish_time"] is not None]
    duration = (max(finishes) - min(arrivals)) if finishes else float("nan")
    prompt = sum(r["prompt_tokens"] for r in requests)
    out = sum(r["output_tokens"] for r in requests)
    busy = [s for s in steps if s.get("num_seqs")]
    row: dict[str, float] = {
        "requests": len(requests), "duration_s": duration,
        "req_per_s": len(finishes) / duration if duration else float("nan"),
        "output_tok_per_s": out / duration if duration else float("nan"),
        "total_tok_per_s": (prompt + out) / duration if duration else float("nan"),
        "prompt_tokens": prompt, "output_tokens": out,
        "cached_tokens": sum(r["cached_tokens"] for r in requests),
        "hit_rate": sum(r["cached_tokens"] for r in requests) / prompt if prompt else 0.0,
        "prefill_tokens": sum(s["prefill_tokens"] for s in steps), "steps": len(busy),
    }
    for name in ("ttft", "e2e_latency", "wait_time"):
        vals = [r[name] for r in requests]
        row[f"{name}_mean"] = float(np.mean([v for v in vals if v is not None])) if any(
            v is not None for v in vals) else float("nan")
        for q in (0.5, 0.9, 0.99):
            row[f"{name}_p{int(q * 100)}"] = _q(vals, q)
    if scheduler is not None:
        row["evicted_pages"] = scheduler.cache.stats.evicted_pages
        row["retractions"] = scheduler.stats.num_retractions
    return row
