"""Prometheus metrics with SGLang's names (one registry per server, so tests can run several).

Gauges are read from Engine.get_load() at scrape time, gen_throughput included (the engine's own count
of sampled tokens over its last 10 s, every request, as SGLang's scheduler reports it); counters and
histograms are fed by the request handlers (`observe_*`).
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, float("inf"))
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5, float("inf"))


class _LoadCollector(Collector):
    """sglang:num_running_reqs, num_queue_reqs, token_usage, cache_hit_rate, gen_throughput, from a load snapshot."""

    def __init__(self, load: Callable[[], dict[str, Any] | None], labels: dict[str, str]) -> None:
        self.load, self.labels = load, labels

    def collect(self) -> Iterable[GaugeMetricFamily]:
        snap = self.load() or {}
        values = {"num_running_reqs": ("Number of running requests.", snap.get("num_running_reqs", 0)),
                  "num_queue_reqs": ("Number of requests in the waiting queue.", snap.get("num_queue_reqs", 0)),
                  "token_usage": ("Fraction of KV pages in use (not free, not evictable).",
                                  snap.get("token_usage", 0.0)),
                  "cache_hit_rate": ("Prefix cache hit rate (cached / prompt tokens).",
                                     snap.get("cache_hit_rate", 0.0)),
                  "gen_throughput": ("Generated tokens per second (the engine's count over its last 10s).",
                                     snap.get("gen_throughput", 0.0))}
        for name, (doc, value) in values.items():
            g = GaugeMetricFamily(f"sglang:{name}", doc, labels=list(self.labels))
            g.add_metric(list(self.labels.values()), float(value))
            yield g


class LoopHistogram(Collector):
    """A histogram of one label set observed from the event loop only: an observation is a bisect and two
    additions (prometheus_client's Histogram takes three locks). Scraped as that Histogram is: _bucket,
    _count, _sum and _created samples. For the streamed, per-token observations."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], labels: dict[str, str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.bounds = [float(b) for b in buckets]
        self.counts = [0] * len(self.bounds)  # per bucket: observations <= its bound and > the previous one
        self.sum = 0.0
        self.created = time.time()

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self) -> Iterable[Metric]:
        m, acc = Metric(self.name, self.documentation, "histogram"), 0.0
        for bound, count in zip(self.bounds, list(self.counts)):
            acc += count
            m.add_sample(self.name + "_bucket", {**self.labels, "le": floatToGoString(bound)}, acc)
        m.add_sample(self.name + "_count", dict(self.labels), acc)
        m.add_sample(self.name + "_sum", dict(self.labels), self.sum)
        if getattr(_prometheus_metrics, "_use_created", True):
            m.add_sample(self.name + "_created", dict(self.labels), self.created)
        yield m


class LoopCounter(Collector):
    """A counter of one label set incremented from the event loop only (an addition); scraped as
    prometheus_client's Counter is (_total, _created)."""

    def __init__(self, name: str, documentation: str, labels: dict[str, str]) -> None:
        self.name, self.documentation, self.labels = name, documentation, labels
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def collect(self) -> Iterable[Metric]:
        m = Metric(self.name, self.documentation, "counter")
        m.add_sample(self.name + "_total", dict(self.labels), self.value)
        if getattr(_prometheus_metrics, "_use_created", True):
            m.add_sample(self.name + "_created", dict(self.labels), self.created)
        yield m


class Metrics:
    """The server's metrics; observe_* are called from the event loop (the streamed, per-token ones are
    LoopHistogram / LoopCounter: not for other threads)."""

    def __init__(self, model_name: str, load: Callable[[], dict[str, Any] | None]) -> None:
        self.registry = CollectorRegistry()
        self.labels = {"model_name": model_name}
        names = list(self.labels)
        kw: dict[str, Any] = dict(labelnames=names, registry=self.registry)
        self.prompt_tokens = Counter("sglang:prompt_tokens", "Prompt tokens processed.", **kw)
        self.generation_tokens = LoopCounter("sglang:generation_tokens", "Tokens generated.", self.labels)
        self.registry.register(self.generation_tokens)
        self.cached_tokens = Counter("sglang:cached_tokens", "Prompt tokens served from the prefix cache.", **kw)
        self.num_requests = Counter("sglang:num_requests", "Requests finished (any reason).", **kw)
        self.num_aborted = Counter("sglang:num_aborted_requests", "Requests aborted.", **kw)
        self.ttft = Histogram("sglang:time_to_first_token_seconds", "Time to first token (streamed requests).",
                              buckets=LATENCY_BUCKETS, **kw)
        self.itl = LoopHistogram("sglang:inter_token_latency_seconds", "Time between output tokens (streamed).",
                                 ITL_BUCKETS, self.labels)
        self.registry.register(self.itl)
        self.e2e = Histogram("sglang:e2e_request_latency_seconds", "End-to-end request latency.",
                             buckets=LATENCY_BUCKETS, **kw)
        self.registry.register(_LoadCollector(load, self.labels))
        self._ttft = self.ttft.labels(**self.labels)  # bound once: .labels() costs more than an observation

    def _add_generated(self, n: int) -> None:
        if n > 0:
            self.generation_tokens.inc(n)

    def observe_stream_step(self, first: bool, elapsed: float, new_tokens: int) -> None:
        """One streamed increment: TTFT on the first, else inter-token latency spread over new_tokens."""
        if first:
            self._ttft.observe(elapsed)
        elif new_tokens > 0:
            observe, gap = self.itl.observe, elapsed / new_tokens
            for _ in range(min(new_tokens, 64)):
                observe(gap)
        self._add_generated(new_tokens)

    def observe_finished(self, meta: dict[str, Any], streamed: bool) -> None:
        """A finished request (its meta_info): token counters, e2e latency, aborts."""
        lab = self.labels
        self.prompt_tokens.labels(**lab).inc(meta.get("prompt_tokens", 0))
        self.cached_tokens.labels(**lab).inc(meta.get("cached_tokens", 0))
        if not streamed:  # streamed requests counted their tokens per increment
            self._add_generated(meta.get("completion_tokens", 0))
        self.e2e.labels(**lab).observe(meta.get("e2e_latency", 0.0))
        self.num_requests.labels(**lab).inc()
        if (meta.get("finish_reason") or {}).get("type") == "abort":
            self.num_aborted.labels(**lab).inc()

    def observe_aborted(self, n: int) -> None:
        """n requests aborted before they produced a result (their client went away)."""
        self.num_requests.labels(**self.labels).inc(n)
        self.num_aborted.labels(**self.labels).inc(n)

    def render(self) -> bytes:
        return generate_latest(self.registry)
