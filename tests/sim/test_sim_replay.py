"""Given the real step times of a recorded run, the simulator reproduces that run exactly:
per-request admission step and order, step count, every per-step record and every per-request time."""
from __future__ import annotations

import pytest

from experiments.workloads import Request, synthetic_workload
from jaxsgl.sim import ConstantCost, ReplayCost, Simulator, poisson
from tests.sim.recorder import record_run


def chained_workload(output_len: int = 6) -> list[Request]:
    """Synthetic groups sharing prefixes, plus 4 three-call chains (each call extends the last)."""
    reqs = list(synthetic_workload(num_groups=6, per_group=5, prefix_len=160, question_len=24,
                                   output_len=output_len, seed=3).requests)
    for c in range(4):
        base = [5000 + 97 * c + i for i in range(120)]
        for j in range(3):
            reqs.append(Request(f"c{c}.{j}", base + list(range(7000 + 40 * j, 7000 + 40 * (j + 1))),
                                output_len - 2 + j, after=f"c{c}.{j - 1}" if j else None))
            base = base + list(range(7000 + 40 * j, 7000 + 40 * (j + 1)))
    return reqs


CASES = {
    "sync-lpm": dict(disable_overlap_schedule=True, schedule_policy="lpm"),
    "overlap-lpm": dict(schedule_policy="lpm"),
    "overlap-aging-lfu": dict(schedule_policy="lpm-aging", radix_eviction_policy="lfu"),
    "overlap-fcfs-retract": dict(schedule_policy="fcfs", max_total_tokens=640),
}
OUTPUT_LEN = {"overlap-fcfs-retract": 36}


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay_of_recorded_step_times_is_exact(name: str) -> None:
    reqs = chained_workload(OUTPUT_LEN.get(name, 6))
    opts = {"max_total_tokens": 2048, "page_size": 16, "chunked_prefill_size": 128, "max_running_requests": 8,
            **CASES[name]}
    roots = [r for r in reqs if r.after is None]
    rec = record_run(reqs, poisson(len(roots), rate=30.0, seed=1), think_time=0.002, **opts)
    assert len(rec.records) == len(reqs)
    res = Simulator(ReplayCost(rec.end_times), check=True, **opts).run(reqs, rec.arrivals, outputs=rec.outputs)
    got = {r["rid"]: r for r in res.requests}
    want = {r["rid"]: r for r in rec.records}
    assert {k: v["admit_step"] for k, v in got.items()} == {k: v["admit_step"] for k, v in want.items()}
    order = lambda recs: [r["rid"] for r in sorted(recs, key=lambda r: (r["admit_step"], r["rid"]))]
    assert order(res.requests) == order(rec.records)
    assert len(res.steps) == len(rec.trace)
    for a, b in zip(res.steps, rec.trace):
        assert a == pytest.approx(b, nan_ok=True)
    for rid, w in want.items():
        assert got[rid] == pytest.approx(w, nan_ok=True), rid
    # arrivals interleave with steps (on the recording's clock; how long requests queue depends on how fast
    # the mock model's steps happened to run, so that is not asserted)
    assert sum(r["end_time"] < max(rec.arrivals.values()) for r in res.steps) >= 2
    if name == "overlap-fcfs-retract":
        assert res.summary["evicted_pages"] > 0 and res.summary["retractions"] > 0


def test_chained_requests_arrive_when_their_predecessor_finishes() -> None:
    reqs = chained_workload()
    roots = [r for r in reqs if r.after is None]
    res = Simulator(ConstantCost(0.01), think_time=0.5, max_total_tokens=4096).run(reqs, [0.0] * len(roots))
    rec = {r["rid"]: r for r in res.requests}
    for r in reqs:
        if r.after is not None:
            assert rec[r.rid]["arrival_time"] == pytest.approx(rec[r.after]["finish_time"] + 0.5)
            assert rec[r.rid]["cached_tokens"] >= 112  # the predecessor's prompt, in whole pages
