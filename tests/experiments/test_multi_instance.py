"""Routers in front of simulated replicas (experiments/multi_instance.py): routing, the shared clock, break-even."""
from __future__ import annotations

import pytest

from experiments import multi_instance as mi
from experiments.workloads import Request, Workload, synthetic_workload
from jaxsgl.sim import ConstantCost, LinearCost, Simulator, offline, poisson

OPTS = dict(max_total_tokens=4096, page_size=16, chunked_prefill_size=256, max_running_requests=8)


def groups(wl: Workload) -> dict[str, str]:
    return {r.rid: r.group for r in wl.requests}


def test_cache_aware_sends_each_prefix_to_one_replica() -> None:
    wl = synthetic_workload(num_groups=6, per_group=6, prefix_len=128, question_len=16, output_len=3, seed=1)
    for router in ("cache-aware", "cache-aware (state)"):
        res = mi.simulate_cluster(wl, ConstantCost(0.01), router, num_replicas=3,
                                  arrivals=poisson(len(wl.requests), 20.0, seed=0), **OPTS)
        by_group: dict[str, set[int]] = {}
        for rid, i in res.route.items():
            by_group.setdefault(groups(wl)[rid], set()).add(i)
        if router == "cache-aware":  # the router's tree knows a prefix from its first routing on
            assert all(len(s) == 1 for s in by_group.values()), by_group
            assert res.reasons == {"low-match": 6, "match": 30}
            assert sum(res.missed_reuse.values()) == 0
        assert len({i for s in by_group.values() for i in s}) == 3  # new prefixes go to the emptiest replica
    rr = mi.simulate_cluster(wl, ConstantCost(0.01), "round-robin", num_replicas=3,
                             arrivals=poisson(len(wl.requests), 20.0, seed=0), **OPTS)
    assert mi.cluster_row(res)["hit_rate"] > mi.cluster_row(rr)["hit_rate"]


def test_round_robin_balances_counts_exactly() -> None:
    wl = synthetic_workload(num_groups=4, per_group=6, prefix_len=64, question_len=16, output_len=2, seed=2)
    res = mi.simulate_cluster(wl, ConstantCost(0.01), "round-robin", num_replicas=4,
                              arrivals=poisson(24, 50.0, seed=1), **OPTS)
    assert [len(r.requests) for r in res.replicas] == [6, 6, 6, 6]
    assert [res.route[r.rid] for r in wl.requests] == [k % 4 for k in range(24)]
    assert mi.cluster_row(res)["imbalance_requests"] == 1.0


def test_cache_aware_falls_back_to_least_load_when_imbalanced() -> None:
    prefix = list(range(1000, 1128))
    reqs = [Request(f"r{i}", prefix + [2000 + i] * 8, 4, group="one") for i in range(24)]
    wl = Workload("one-prefix", reqs)
    sticky = mi.simulate_cluster(wl, ConstantCost(0.01), mi.CacheAware(), num_replicas=3, arrivals=offline(24), **OPTS)
    assert sorted(len(r.requests) for r in sticky.replicas) == [0, 0, 24]  # balanced by the default thresholds
    spread = mi.simulate_cluster(wl, ConstantCost(0.01), mi.CacheAware(balance_abs=2, balance_rel=1.0),
                                 num_replicas=3, arrivals=offline(24), **OPTS)
    counts = [len(r.requests) for r in spread.replicas]
    assert max(counts) - min(counts) <= 3 and spread.reasons["balance"] > 0


def test_one_replica_cluster_is_the_single_simulation() -> None:
    """The driver (router + SimRun stepping + chained arrivals) reproduces Simulator.run exactly."""
    reqs = list(synthetic_workload(num_groups=3, per_group=5, prefix_len=96, question_len=16, output_len=4,
                                   seed=3).requests)
    for c in range(3):  # chains: call j waits for call j-1
        base = list(range(5000 + 100 * c, 5060 + 100 * c))
        for j in range(3):
            base = base + list(range(7000 + 20 * j, 7020 + 20 * j))
            reqs.append(Request(f"c{c}.{j}", list(base), 3 + j, after=f"c{c}.{j - 1}" if j else None))
    wl = Workload("mixed", reqs)
    arr = poisson(sum(r.after is None for r in reqs), 15.0, seed=4)
    cost = LinearCost({"tokens": 2e-4}, intercept=0.005)
    for overlap in (True, False):
        opts = {**OPTS, "disable_overlap_schedule": not overlap}
        single = Simulator(cost, think_time=0.01, **opts).run(reqs, arr)
        cluster = mi.simulate_cluster(wl, cost, "least-tokens", num_replicas=1, arrivals=arr, think_time=0.01, **opts)
        key = lambda recs: sorted(recs, key=lambda r: r["rid"])
        assert key(cluster.replicas[0].requests) == key(single.requests)
        assert cluster.replicas[0].steps == single.steps


def test_break_even_bandwidth_and_kv_bytes() -> None:
    assert mi.kv_bytes_per_token("benchmarks/configs/llama-3.1-8b") == 2 * 32 * 8 * 128 * 2
    assert mi.kv_bytes_per_token({"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 64}) == 2 * 2 * 4 * 16 * 2
    cost = LinearCost({"tokens": 1e-3})  # 1 ms per token, no step overhead
    assert mi.recompute_seconds(cost, 1000, suffix=32, chunk=256) == pytest.approx(1.0)
    assert mi.break_even_gbps(131072, 1000, 1.0) == pytest.approx(131072 * 1000 / 1e9)
    steps = [{"step": 0, "end_time": 1.0, "step_time": 1.0}, {"step": 1, "end_time": 1.5, "step_time": 1.2}]
    assert mi.busy_seconds(steps) == pytest.approx(1.5)  # overlap: step 1 waited for step 0
