"""A recorded run to replay: the engine's step loop (engine/step_loop.py) with the MockModel as the model.

It builds real StepInputs, feeds overlapped decodes from the previous step's outputs
(placeholder_sources), and times each step by the MockModel's measured run time (x time_scale, plus
seeded jitter), so the step times are arbitrary, real measurements. Requests arrive at given
times, or when the request they wait for finishes (plus think_time); a loop iteration adds the
requests that arrived by its start, which is the end of the previous step (or, when idle, the
next arrival). The recording keeps what a replay needs: per-step end times, per-request arrival
times and output ids, and the scheduler's records.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from jaxsgl.scheduler import Req, StepInputBuilder
from jaxsgl.scheduler.advance import placeholder_sources
from jaxsgl.scheduler.mock_model import MockModel
from jaxsgl.scheduler.records import RequestTimes, request_records
from jaxsgl.sim import ConstantCost, Simulator


@dataclass
class Recording:
    end_times: dict[int, float]
    arrivals: dict[str, float]
    outputs: dict[str, list[int]]
    trace: list[dict]
    records: list[dict]


def record_run(requests, roots_at: list[float], *, think_time: float = 0.0, seed: int = 0, time_scale: float = 100.0,
               scheduler_options: dict | None = None, **engine_options) -> Recording:
    """Run `requests` (experiments.workloads.Request-like) through Scheduler + MockModel."""
    clock = [0.0]
    sched = Simulator(ConstantCost(), scheduler_options=scheduler_options, **engine_options).make_scheduler(
        lambda: clock[0])
    overlap = not engine_options.get("disable_overlap_schedule", False)
    cfg, ps = sched.config, sched.page_size
    model = MockModel(sched.pool.capacity, ps)
    builder = StepInputBuilder.for_limits(ps, max_tokens=cfg.prefill_budget + cfg.max_running_requests,
                                          max_seqs=cfg.max_running_requests, max_context_len=cfg.max_context_len)
    rng = np.random.default_rng(seed)
    by_rid = {r.rid: r for r in requests}
    pending = [(t, r.rid) for t, r in zip(roots_at, [r for r in requests if r.after is None])]
    live: dict[str, tuple[Req, RequestTimes]] = {}
    done, arrivals, end_times = [], {}, {}
    prev = None  # (batch, out, end)

    def complete(batch, out, end):
        batch.trace.end_time = end
        for req in sched.fill(batch, out[:len(batch.seqs)]):
            times = live[req.rid][1]
            times.first_token = end if times.first_token is None else times.first_token
            if req.num_generated >= req.max_new_tokens:
                sched.finish(req, "length")
                times.finish = end
                done.append(live.pop(req.rid))
                pending.extend((end + think_time, c.rid) for c in requests if c.after == req.rid)
        sched.check_integrity()

    while pending or sched.has_work() or prev is not None:
        pending.sort()
        if not sched.has_work() and prev is None:
            clock[0] = max(clock[0], pending[0][0])
        while pending and pending[0][0] <= clock[0]:
            t, rid = pending.pop(0)
            r = by_rid[rid]
            live[rid] = (sched.add_request(Req(rid, list(r.prompt_ids), r.max_new_tokens, arrival_time=t)),
                         RequestTimes(t))
            arrivals[rid] = t
        batch = sched.schedule()
        if not batch:
            sched.cancel_pending()
            assert prev is not None, "nothing admissible with nothing in flight"
            clock[0] = max(clock[0], prev[2])
            complete(*prev)
            prev = None
            continue
        step_in = builder.build(batch)
        src = placeholder_sources(batch, step_in, prev[0] if prev is not None else None)
        t0 = time.perf_counter()
        out = model.step(step_in, batch, prev[1] if prev is not None else None, src)
        measured = (time.perf_counter() - t0) * time_scale + float(rng.uniform(0.001, 0.02))
        start = max(clock[0], prev[2]) if prev is not None else clock[0]
        end_times[batch.step] = start + measured
        batch.trace.step_time = start + measured - clock[0]
        sched.advance(batch)
        if overlap:
            if prev is not None:
                clock[0] = max(clock[0], prev[2])
                complete(*prev)
            prev = (batch, out, start + measured)
        else:
            clock[0] = start + measured
            complete(batch, out, start + measured)
    trace = sched.trace_records()
    outputs = {req.rid: req.generated_ids() for req, _ in done}
    return Recording(end_times, arrivals, outputs, trace, request_records(done, trace))
