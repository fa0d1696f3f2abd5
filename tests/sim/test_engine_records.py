"""The Engine exports the simulator's per-request and per-step columns, and replaying its step
times in the simulator reproduces its admission steps and step count exactly.

Needs Engine.request_records() (the lead wires it into the engine; skipped until then)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from experiments.workloads import Request
from jaxsgl.scheduler import StepTrace
from jaxsgl.scheduler.records import REQUEST_COLUMNS, as_frame
from jaxsgl.sim import ReplayCost, Simulator

TIME_FIELDS = ("step_time", "end_time", "prepare_time", "dispatch_time", "wait_time", "process_time")  # the engine's clock only


def workload() -> list[Request]:
    rng = np.random.default_rng(0)
    prefixes = [rng.integers(100, 40000, 80).tolist() for _ in range(3)]
    return [Request(f"q{i}", prefixes[i % 3] + rng.integers(100, 40000, 8 + i).tolist(), 2 + i % 4)
            for i in range(12)]


@pytest.mark.parametrize("overlap", [False, True])
def test_engine_records_replay_in_the_simulator(request: pytest.FixtureRequest, overlap: bool) -> None:
    from jaxsgl.engine.engine import Engine
    if not hasattr(Engine, "request_records"):
        pytest.skip("Engine.request_records() is not wired yet")
    tiny_model_dir = request.getfixturevalue("tiny_model_dir")
    reqs = workload()
    opts = dict(max_total_tokens=512, page_size=16, chunked_prefill_size=64, max_running_requests=4,
                schedule_policy="lpm", disable_overlap_schedule=not overlap)
    with Engine(str(tiny_model_dir), dtype="float32", **opts) as eng:
        outs = eng.generate(input_ids=[r.prompt_ids for r in reqs], rid=[r.rid for r in reqs],
                            sampling_params=[{"max_new_tokens": r.max_new_tokens, "temperature": 0,
                                              "ignore_eos": True} for r in reqs])
        recs, trace = eng.request_records(t0=0.0), eng.trace()
    df = as_frame(recs)
    assert list(df.columns) == list(REQUEST_COLUMNS) and len(df) == len(reqs)
    assert list(trace[0]) == [f.name for f in dataclasses.fields(StepTrace)]
    t0 = min(r["arrival_time"] for r in recs)
    ends = {t["step"]: t["end_time"] - t0 for t in trace if t["end_time"] is not None}
    arrivals = {r["rid"]: r["arrival_time"] - t0 for r in recs}
    outputs = {o["meta_info"]["id"]: o["output_ids"] for o in outs}
    res = Simulator(ReplayCost(ends), **opts).run(reqs, arrivals, outputs=outputs)
    assert list(res.request_frame().columns) == list(df.columns)
    assert {r["rid"]: r["admit_step"] for r in res.requests} == {r["rid"]: r["admit_step"] for r in recs}
    assert len(res.steps) == len(trace)
    for a, b in zip(res.steps, trace):
        assert {k: v for k, v in a.items() if k not in TIME_FIELDS} == \
               {k: v for k, v in b.items() if k not in TIME_FIELDS}
    sim = {r["rid"]: r for r in res.requests}
    for r in recs:  # engine times are taken a little before the step's end_time
        assert sim[r["rid"]]["finish_time"] == pytest.approx(r["finish_time"] - t0, abs=0.02)
        assert sim[r["rid"]]["cached_tokens"] == r["cached_tokens"]
