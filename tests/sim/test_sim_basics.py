"""Arrival processes, the per-request record schema, plug-in policies and the no-JAX rule."""
from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from experiments.workloads import Request, synthetic_workload
from jaxsgl.scheduler import Scheduler, StepTrace
from jaxsgl.scheduler.policies.aging import LPMAging
from jaxsgl.scheduler.records import REQUEST_COLUMNS, as_frame
from jaxsgl.sim import ConstantCost, Simulator, from_trace, gamma, offline, poisson


def test_poisson_arrivals_are_seeded_and_have_the_rate() -> None:
    a, b = poisson(4000, 8.0, seed=3), poisson(4000, 8.0, seed=3)
    assert a == b and a != poisson(4000, 8.0, seed=4)
    assert np.all(np.diff(a) >= 0) and a[0] > 0
    assert len(a) / a[-1] == pytest.approx(8.0, rel=0.05)
    gaps = np.diff(gamma(4000, 8.0, cv=3.0, seed=0))
    assert 1 / gaps.mean() == pytest.approx(8.0, rel=0.15) and gaps.std() / gaps.mean() > 2.0
    assert offline(3) == [0.0] * 3
    assert from_trace([5.0, 7.0, 6.0, 8.0]) == [0.0, 1.0, 2.0, 3.0]
    assert from_trace([5.0, 7.0, 6.0, 9.0], rate=1.0) == pytest.approx([0.0, 0.75, 1.5, 3.0])


def test_request_and_step_records_have_the_shared_columns() -> None:
    wl = synthetic_workload(num_groups=3, per_group=4, prefix_len=64, question_len=16, output_len=3)
    res = Simulator(ConstantCost(0.01), max_total_tokens=2048).run(wl.requests, poisson(12, 50.0))
    df = res.request_frame()
    assert list(df.columns) == list(REQUEST_COLUMNS) and len(df) == 12
    assert (df.ttft > 0).all() and (df.e2e_latency >= df.ttft).all() and (df.wait_time >= 0).all()
    assert (df.output_tokens == 3).all() and (df.finish_reason == "length").all()
    assert df.cached_tokens.sum() == res.summary["cached_tokens"] > 0
    assert list(res.step_frame().columns) == [f.name for f in dataclasses.fields(StepTrace)]
    assert list(as_frame([]).columns) == list(REQUEST_COLUMNS)


def test_lpm_aging_is_selectable_by_name_and_bounds_the_wait() -> None:
    assert isinstance(Scheduler.create(64, 16, schedule_policy="lpm-aging").policy, LPMAging)
    hot = list(range(1000, 1400))
    reqs = [Request(f"hot{i}", hot + [2000 + i] * 8, 2) for i in range(60)]
    reqs.append(Request("cold", list(range(5000, 5100)), 2))
    arrivals = [i / 40 for i in range(60)] + [0.1]  # hot requests arrive faster than 2 slots serve them
    waits = {}
    for policy in ("lpm", "lpm-aging"):  # aging: alpha = 1000 tokens per second waited
        res = Simulator(ConstantCost(0.05), schedule_policy=policy, max_running_requests=2,
                        max_total_tokens=4096).run(reqs, arrivals)
        waits[policy] = {r["rid"]: r["wait_time"] for r in res.requests}["cold"]
    assert waits["lpm"] > 2.0  # LPM serves every hot request first
    assert waits["lpm-aging"] < waits["lpm"] / 2


def test_aging_with_alpha_zero_is_lpm_order() -> None:
    wl = synthetic_workload(num_groups=4, per_group=6, prefix_len=96, question_len=16, output_len=4, seed=5)
    arr = poisson(len(wl.requests), 40.0, seed=2)
    got = {}
    for name, policy in (("lpm", "lpm"), ("aging0", LPMAging(alpha=0.0))):
        res = Simulator(ConstantCost(0.01), schedule_policy=policy, max_total_tokens=1024,
                        max_running_requests=4).run(wl.requests, arr)
        got[name] = [(r["rid"], r["admit_step"]) for r in res.requests]
    assert got["lpm"] == got["aging0"]


def test_sim_does_not_import_jax() -> None:
    code = ("import sys, jaxsgl.sim, jaxsgl.sim.plots, jaxsgl.scheduler.records; "
            "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plots_draw_the_shared_frames() -> None:
    pytest.importorskip("pandas")
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    from jaxsgl.sim import plots
    wl = synthetic_workload(num_groups=3, per_group=6, prefix_len=64, question_len=16, output_len=3)
    res = Simulator(ConstantCost(0.01), max_total_tokens=1024).run(wl.requests, poisson(18, 30.0))
    req, steps = res.request_frame(), res.step_frame()
    assert plots.hit_rate_over_time(req, window=5).get_lines()
    assert plots.ttft_cdf_by_match(req, bins=(0.0, 0.5, 1.0)).get_lines()
    assert len(plots.queue_length(steps).get_lines()) == 2


@pytest.mark.parametrize("schedule", ["fcfs", "lpm"])
def test_offline_sync_run_equals_the_step_only_ablation(schedule: str) -> None:
    """Time cannot change an offline synchronous run: the same steps as policy_ablation.simulate."""
    from experiments import policy_ablation as pa
    wl = synthetic_workload(num_groups=8, per_group=6, prefix_len=256, question_len=32, output_len=8, seed=2)
    pool = pa.pool_tokens_for(wl, 0.2, 16)
    a = pa.simulate(wl, schedule=schedule, pool_tokens=pool, arrival_rate=None).row
    b = Simulator(ConstantCost(0.01), schedule_policy=schedule, max_total_tokens=pool,
                  disable_overlap_schedule=True).run(wl.requests, offline(len(wl.requests))).summary
    assert a["evicted_pages"] > 0
    assert (a["hit_rate"], a["steps"], a["evicted_pages"], a["prefill_tokens"]) == \
           (b["hit_rate"], b["steps"], b["evicted_pages"], b["prefill_tokens"])
