"""Prefix sharing across replicas: which router, what imbalance, what KV migration would cost (multi_instance.ipynb).

N replicas, each a jaxsgl.sim simulation with its own Scheduler, radix cache and KV pool, advance on one
clock (Simulator.start() / SimRun) behind a router that sees each request when it arrives:

    round-robin          request k goes to replica k mod N
    least-requests       fewest outstanding requests (routed, not finished); ties: lowest index
    least-tokens         fewest outstanding tokens: uncomputed prompt tokens + outputs still to generate
    cache-aware          sgl-router's cache_aware policy on token ids (see CacheAware)
    cache-aware (state)  the same, but the match is read from each replica's real radix cache

Chained requests (`after`: a chat's next turn, a ReAct agent's next call) arrive when their predecessor
finishes (plus think_time) and are routed then, so round-robin scatters a conversation over replicas.
The router sees each replica as of its last loop iteration (at most one step ahead of the arrival).

Break-even KV-migration bandwidth: recomputing a P-token prefix on the chosen replica costs the extra
prefill time recompute_seconds(P); moving its KV from the replica that holds it costs P x kv_bytes / bandwidth.
They are equal at bandwidth P x kv_bytes / recompute_seconds(P) (break_even_gbps). Host only (no JAX).
"""
from __future__ import annotations

import heapq
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxsgl.sim import SimResult, SimRun, Simulator, step_features, summarize

from experiments.workloads import Workload


# ------------------------------------------------------------------ routers
@dataclass
class Replica:
    """What a router may read of one replica: its simulation and the rids routed to it, unfinished."""
    index: int
    run: SimRun
    outstanding: dict[str, Any] = field(default_factory=dict)  # rid -> workload request

    def load_requests(self) -> int:
        return len(self.outstanding)

    def load_tokens(self) -> int:
        """Uncomputed prompt tokens + outputs still to generate of the outstanding requests."""
        total = 0
        for rid, r in self.outstanding.items():
            live = self.run.live.get(rid)
            if live is None:
                total += len(r.prompt_ids) + r.max_new_tokens
            else:
                req = live[0]
                total += max(len(req.prompt_ids) - req.kv_len, 0) + max(req.max_new_tokens - req.num_generated, 0)
        return total

    def cached_prefix(self, prompt: Sequence[int]) -> int:
        """Tokens of `prompt` in this replica's radix cache now (whole pages; read-only)."""
        return self.run.sched.cache.prefix_len(prompt)


class Router:
    """choose(request, replicas) -> replica index. `reasons` counts why each choice was made."""
    name = "router"

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def choose(self, request: Any, replicas: Sequence[Replica]) -> int:
        raise NotImplementedError

    def _why(self, reason: str) -> None:
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


class RoundRobin(Router):
    name = "round-robin"

    def __init__(self) -> None:
        super().__init__()
        self.k = 0

    def choose(self, request: Any, replicas: Sequence[Replica]) -> int:
        i, self.k = self.k % len(replicas), self.k + 1
        return i


class LeastLoad(Router):
    """Fewest outstanding requests (metric="requests") or tokens (metric="tokens")."""

    def __init__(self, metric: str = "requests") -> None:
        super().__init__()
        self.metric = metric
        self.name = f"least-{metric}"

    def choose(self, request: Any, replicas: Sequence[Replica]) -> int:
        load = [r.load_requests() if self.metric == "requests" else r.load_tokens() for r in replicas]
        return int(np.argmin(load))


class TokenTrie:
    """The router's approximate tree of one replica: every prompt routed there (never evicted)."""

    def __init__(self) -> None:
        self.root: dict = {}
        self.size = 0

    def insert(self, ids: Sequence[int]) -> None:
        node = self.root
        for t in ids:
            nxt = node.get(t)
            if nxt is None:
                nxt = node[t] = {}
                self.size += 1
            node = nxt

    def match(self, ids: Sequence[int]) -> int:
        node, n = self.root, 0
        for t in ids:
            node = node.get(t)
            if node is None:
                break
            n += 1
        return n


class CacheAware(Router):
    """sgl-router's cache_aware policy (sgl-project/sglang, sgl-router), on token ids instead of characters.

    load = outstanding requests per replica (the router's running queue). Per request:
      1. imbalanced = max(load) - min(load) > balance_abs and max(load) > balance_rel x min(load):
         route to the least-loaded replica.
      2. else take the replica with the longest prefix match (ties: lower load, then lower index);
         if match / prompt length > cache_threshold route there,
      3. else route to the replica whose tree is smallest ("most free cache"; source="state": fewest
         cached pages in the real radix cache).
    source="tree": matches against the router's own tree of the prompts it routed to each replica
    (inserted at routing, never evicted: sgl-router's max_tree_size is 2^26 characters), as sgl-router
    does. source="state": matches against each replica's real radix cache at routing time (what a router
    fed by KV-cache events would see; a prompt routed but not yet prefilled is not in it).
    Defaults are sgl-router's current ones (cache_threshold 0.3, balance_abs 64, balance_rel 1.5)."""

    def __init__(self, source: str = "tree", cache_threshold: float = 0.3, balance_abs: int = 64,
                 balance_rel: float = 1.5) -> None:
        super().__init__()
        self.source, self.cache_threshold = source, cache_threshold
        self.balance_abs, self.balance_rel = balance_abs, balance_rel
        self.trees: list[TokenTrie] = []
        self.name = "cache-aware" if source == "tree" else f"cache-aware ({source})"

    def choose(self, request: Any, replicas: Sequence[Replica]) -> int:
        if not self.trees:
            self.trees = [TokenTrie() for _ in replicas]
        load = [r.load_requests() for r in replicas]
        if max(load) - min(load) > self.balance_abs and max(load) > self.balance_rel * min(load):
            i = int(np.argmin(load))
            self._why("balance")
        else:
            p = request.prompt_ids
            match = [t.match(p) if self.source == "tree" else r.cached_prefix(p) for t, r in zip(self.trees, replicas)]
            i = min(range(len(replicas)), key=lambda k: (-match[k], load[k], k))
            if match[i] / max(len(p), 1) > self.cache_threshold:
                self._why("match")
            else:
                free = [t.size for t in self.trees] if self.source == "tree" else \
                    [r.run.sched.cache.cached_pages for r in replicas]
                i = min(range(len(replicas)), key=lambda k: (free[k], load[k], k))
                self._why("low-match")
        self.trees[i].insert(request.prompt_ids)
        return i


ROUTERS: dict[str, Callable[[], Router]] = {
    "round-robin": RoundRobin,
    "least-requests": lambda: LeastLoad("requests"),
    "least-tokens": lambda: LeastLoad("tokens"),
    "cache-aware": lambda: CacheAware("tree"),
    "cache-aware (state)": lambda: CacheAware("state"),
}


# ------------------------------------------------------------------ the cluster simulation
@dataclass
class ClusterResult:
    """replicas: each replica's SimResult; route: rid -> replica; missed_reuse: per request, tokens
    cached (real radix cache, at routing time) on the best replica minus on the chosen one."""
    router: str
    replicas: list[SimResult]
    route: dict[str, int]
    missed_reuse: dict[str, int]
    reasons: dict[str, int]

    @property
    def requests(self) -> list[dict]:
        return [dict(r, replica=i) for i, res in enumerate(self.replicas) for r in res.requests]

    def request_frame(self) -> Any:
        import pandas as pd
        return pd.DataFrame(self.requests)


def simulate_cluster(workload: Workload, cost: Any, router: Router | str, *, num_replicas: int,
                     arrivals: Sequence[float], think_time: float = 0.0, **options: Any) -> ClusterResult:
    """Replay `workload` (root requests at `arrivals`, in order; chained ones when their predecessor
    finishes) through `num_replicas` simulated replicas behind `router`. options: the Engine's, per replica."""
    router = ROUTERS[router]() if isinstance(router, str) else router
    sim = Simulator(cost, **options)
    outputs = workload.meta.get("outputs")
    reps = [Replica(i, sim.start(outputs=outputs)) for i in range(num_replicas)]
    roots = [r for r in workload.requests if r.after is None]
    if len(arrivals) != len(roots):
        raise ValueError(f"{len(arrivals)} arrival times for {len(roots)} root requests")
    children: dict[str, list[Any]] = {}
    for r in workload.requests:
        if r.after is not None:
            children.setdefault(r.after, []).append(r)
    heap = [(t, k, r) for k, (t, r) in enumerate(zip(arrivals, roots))]
    heapq.heapify(heap)
    seq = len(heap)
    route: dict[str, int] = {}
    missed: dict[str, int] = {}
    while True:
        times = [(t, i) for i, rep in enumerate(reps) if (t := rep.run.next_time()) is not None]
        t_rep, i_rep = min(times) if times else (math.inf, -1)
        if heap and heap[0][0] <= t_rep:
            t, _, r = heapq.heappop(heap)
            cached = [rep.cached_prefix(r.prompt_ids) for rep in reps]
            i = router.choose(r, reps)
            route[r.rid], missed[r.rid] = i, max(cached) - cached[i]
            reps[i].outstanding[r.rid] = r
            reps[i].run.submit(r, t)
        elif times:
            for rid, t_fin in reps[i_rep].run.step():
                del reps[i_rep].outstanding[rid]
                for child in children.get(rid, ()):
                    heapq.heappush(heap, (t_fin + think_time, seq, child))
                    seq += 1
        else:
            break
    return ClusterResult(router.name, [rep.run.result() for rep in reps], route, missed, dict(router.reasons))


def busy_seconds(steps: Sequence[Mapping[str, Any]]) -> float:
    """Time a replica spent computing steps (overlap: a step starts when the previous one ends)."""
    busy, prev_end = 0.0, -math.inf
    for s in sorted(steps, key=lambda s: s["step"]):
        if s.get("end_time") is None or s.get("step_time") is None:
            continue
        start = max(s["end_time"] - s["step_time"], prev_end)
        busy += s["end_time"] - start
        prev_end = s["end_time"]
    return busy


def _ratio(x: Sequence[float]) -> float:
    """max / mean (1.0 = perfectly balanced)."""
    m = float(np.mean(x))
    return float(np.max(x)) / m if m > 0 else float("nan")


def cluster_row(res: ClusterResult) -> dict[str, Any]:
    """Hit rate, throughput, TTFT quantiles, load imbalance (max/mean over replicas of requests,
    computed tokens and busy time) and missed reuse of one cluster run."""
    recs = res.requests
    steps = [s for r in res.replicas for s in r.steps]
    s = summarize(recs, steps)
    n_req = [len(r.requests) for r in res.replicas]
    work = [sum(x["new_tokens"] for x in r.steps) for r in res.replicas]
    busy = [busy_seconds(r.steps) for r in res.replicas]
    return {"router": res.router, "hit_rate": s["hit_rate"], "req_per_s": s["req_per_s"],
            "total_tok_per_s": s["total_tok_per_s"], "prefill_tokens": s["prefill_tokens"],
            "ttft_p50": s["ttft_p50"], "ttft_p99": s["ttft_p99"], "e2e_p99": s["e2e_latency_p99"],
            "imbalance_requests": _ratio(n_req), "imbalance_tokens": _ratio(work), "imbalance_busy": _ratio(busy),
            "missed_reuse_tokens": sum(res.missed_reuse.values()),
            "missed_reuse_frac": sum(res.missed_reuse.values()) / max(s["prompt_tokens"], 1),
            **{f"why_{k}": v for k, v in res.reasons.items()}}


def run_grid(workloads: Mapping[str, Workload], cost: Any, *, routers: Sequence[str], num_replicas: int,
             rates: Mapping[str, Sequence[float]], pool_tokens: Mapping[str, int], seed: int = 0,
             think_time: float = 0.0, **options: Any) -> tuple[list[dict], dict]:
    """One cluster_row per (workload, rate, router); returns (rows, runs[(workload, rate, router)])."""
    from jaxsgl.sim import poisson
    rows, runs = [], {}
    for label, wl in workloads.items():
        n_roots = sum(r.after is None for r in wl.requests)
        for rate in rates[label]:
            arr = poisson(n_roots, rate, seed=seed)
            for name in routers:
                res = simulate_cluster(wl, cost, name, num_replicas=num_replicas, arrivals=arr,
                                       think_time=think_time, max_total_tokens=pool_tokens[label], **options)
                runs[(label, rate, name)] = res
                rows.append({"workload": label, "rate": rate, **cluster_row(res)})
    return rows, runs


# ------------------------------------------------------------------ KV migration vs recompute
def kv_bytes_per_token(config: Mapping[str, Any] | str | Path, dtype_bytes: int = 2) -> int:
    """K and V of every layer for one token: 2 x layers x kv_heads x head_dim x dtype_bytes.
    config: an HF config.json dict, the file, or its folder."""
    if not isinstance(config, Mapping):
        p = Path(config)
        config = json.loads((p / "config.json" if p.is_dir() else p).read_text())
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    return 2 * config["num_hidden_layers"] * config.get("num_key_value_heads", heads) * head_dim * dtype_bytes


def prefill_seconds(cost: Any, new: int, cached: int = 0, chunk: int = 512) -> float:
    """Predicted time of prefilling `new` tokens after `cached` ones, alone, in chunks of `chunk`."""
    t, done = 0.0, 0
    while done < new:
        c = min(chunk, new - done)
        t += cost.predict(step_features([(c, cached + done, True)], cost.padding))
        done += c
    return t


def recompute_seconds(cost: Any, prefix: int, suffix: int = 32, chunk: int = 512) -> float:
    """Extra prefill time of a (prefix + suffix)-token prompt when its prefix is not cached."""
    return prefill_seconds(cost, prefix + suffix, 0, chunk) - prefill_seconds(cost, suffix, prefix, chunk)


def break_even_gbps(kv_bytes: int, prefix: int, seconds: float) -> float:
    """Bandwidth (GB/s, 1e9 bytes) at which moving `prefix` tokens of KV takes `seconds`."""
    return prefix * kv_bytes / seconds / 1e9 if seconds > 0 else math.inf
