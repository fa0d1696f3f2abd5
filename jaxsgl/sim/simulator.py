"""A discrete-event serving simulator: the real Scheduler, radix cache and policies, on a simulated clock.

    from jaxsgl.sim import Simulator, load_profile, poisson
    sim = Simulator(load_profile("benchmarks/results/step_profile_smollm2_cpu.json"),
                    max_total_tokens=16384, schedule_policy="lpm", radix_eviction_policy="lru")
    res = sim.run(requests, poisson(len(requests), rate=2.0, seed=0))
    res.request_frame(); res.step_frame(); res.summary

It runs the engine's loop (engine/step_loop.py) step for step, with the model replaced by a step
cost (cost_model.py) that advances the clock:

    sync:     add arrivals <= now, schedule N, dispatch N, advance N, now += cost(N), complete N
    overlap:  add arrivals <= now, schedule N+1, dispatch N+1 at now (it starts when N ends),
              advance N+1, now = end(N), complete N

`complete` fills the step's tokens and finishes requests that reached max_new_tokens (the engine's
length stop with ignore_eos). Requests arrive at the given times; one with `after` set arrives
when that request finishes (plus think_time), unless `arrivals` gives it a time. When nothing is
running the clock jumps to the next arrival. Output tokens are fake ids below 1000 (or `outputs`,
recorded ids to replay). Options are the Engine's (EngineOptions names: schedule_policy,
radix_eviction_policy, max_total_tokens, chunked_prefill_size, ...); `scheduler_options` sets any
other SchedulerConfig field. Host only, no JAX.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jaxsgl.engine.options import EngineOptions
from jaxsgl.scheduler import Req, ScheduledBatch, Scheduler
from jaxsgl.scheduler.records import RequestTimes, as_frame, request_records
from jaxsgl.sim.cost_model import StepCost
from jaxsgl.sim.metrics import summarize

# EngineOptions that do not affect scheduling (accepted and ignored, so engine kwargs can be reused).
_IGNORED = {"model_path", "dtype", "load_format", "kv_cache_dtype", "mem_fraction_static", "attention_backend",
            "skip_tokenizer_init", "seq_buckets", "warmup", "debug_check_integrity"}


class WorkloadRequest(Protocol):
    """What the simulator reads from a request (experiments.workloads.Request has it)."""
    rid: str
    prompt_ids: list[int]
    max_new_tokens: int


@dataclass
class SimResult:
    """requests: per-request records (jaxsgl.scheduler.records.REQUEST_COLUMNS); steps: the
    scheduler's trace_records() with simulated step_time / end_time; summary: metrics.summarize."""
    requests: list[dict]
    steps: list[dict] = field(repr=False)
    summary: dict = field(default_factory=dict)
    scheduler: Scheduler | None = field(default=None, repr=False)

    def request_frame(self) -> Any:
        return as_frame(self.requests)

    def step_frame(self) -> Any:
        import pandas as pd
        return pd.DataFrame(self.steps)


@dataclass
class _InFlight:
    batch: ScheduledBatch
    ids: list[int]
    dispatch: float
    end: float


class Simulator:
    """Replays workloads through a fresh Scheduler per run. Mutates nothing it is given."""

    def __init__(self, cost: StepCost, *, think_time: float = 0.0, check: bool = False,
                 scheduler_options: Mapping[str, Any] | None = None, **engine_options: Any) -> None:
        self.cost = cost
        self.think_time = think_time
        self.check = check
        self.opts = EngineOptions.from_kwargs(None, engine_options)
        self.scheduler_options = dict(scheduler_options or {})

    def make_scheduler(self, clock: Any) -> Scheduler:
        """A Scheduler built from the options exactly as the Engine builds its own."""
        o = self.opts
        total = o.max_total_tokens or 16384  # the Engine's CPU default
        num_pages = -(-total // o.page_size)
        context = min(o.context_length or num_pages * o.page_size, num_pages * o.page_size)
        cfg: dict[str, Any] = dict(
            schedule_policy=o.schedule_policy, max_running_requests=o.max_running_requests,
            max_prefill_tokens=o.max_prefill_tokens, chunked_prefill_size=o.chunked_prefill_size,
            max_context_len=context, max_wait_steps=o.max_wait_steps, enable_prefix_dedup=o.enable_prefix_dedup,
            random_seed=o.random_seed)
        cfg.update(self.scheduler_options)
        return Scheduler.create(num_pages, o.page_size, eviction_policy=o.radix_eviction_policy,
                                disable_radix_cache=o.disable_radix_cache, clock=clock, **cfg)

    def run(self, requests: Sequence[WorkloadRequest], arrivals: Sequence[float] | Mapping[str, float] | None = None,
            *, outputs: Mapping[str, Sequence[int]] | None = None, max_steps: int = 10_000_000) -> SimResult:
        """Simulate `requests` to completion. arrivals: one time per request without `after`, in
        order (a sequence), or rid -> time for any request (a mapping); None = all at t = 0."""
        now = [0.0]
        sched = self.make_scheduler(lambda: now[0])
        overlap = not self.opts.disable_overlap_schedule
        by_rid = {r.rid: r for r in requests}
        children: dict[str, list[WorkloadRequest]] = {}
        heap: list[tuple[float, int, str]] = []
        timed = dict(arrivals) if isinstance(arrivals, Mapping) else {}
        roots = [r for r in requests if r.rid in timed or getattr(r, "after", None) is None]
        if arrivals is None or isinstance(arrivals, Mapping):
            times = [timed.get(r.rid, 0.0) for r in roots]
        else:
            if len(arrivals) != len(roots):
                raise ValueError(f"{len(arrivals)} arrival times for {len(roots)} requests without `after`")
            times = list(arrivals)
        for i, (r, t) in enumerate(zip(roots, times)):
            heapq.heappush(heap, (t, i, r.rid))
        for r in requests:
            if r.rid not in timed and getattr(r, "after", None) is not None:
                children.setdefault(r.after, []).append(r)  # type: ignore[attr-defined]
        seq = [len(roots)]
        live: dict[str, tuple[Req, RequestTimes]] = {}
        done: list[tuple[Req, RequestTimes]] = []
        wall0 = time.perf_counter()

        def add_arrivals() -> None:
            while heap and heap[0][0] <= now[0]:
                t, _, rid = heapq.heappop(heap)
                r = by_rid[rid]
                req = Req(rid, list(r.prompt_ids), max_new_tokens=r.max_new_tokens,
                          priority=getattr(r, "priority", 0), arrival_time=t)
                sched.add_request(req)
                live[rid] = (req, RequestTimes(t))

        def end_request(req: Req, t: float) -> None:
            sched.finish(req, "length")
            _, times = live.pop(req.rid)
            times.finish = t
            done.append((req, times))
            for child in children.get(req.rid, ()):
                heapq.heappush(heap, (t + self.think_time, seq[0], child.rid))
                seq[0] += 1

        def complete(f: _InFlight) -> None:
            f.batch.trace.step_time = f.end - f.dispatch
            f.batch.trace.end_time = f.end
            for req in sched.fill(f.batch, f.ids):
                if req.is_done:
                    continue
                times = live[req.rid][1]
                if req.max_new_tokens > 0 and times.first_token is None:
                    times.first_token = f.end
                if req.num_generated >= req.max_new_tokens:
                    end_request(req, f.end)
            if self.check:
                sched.check_integrity()

        inflight: _InFlight | None = None
        while heap or sched.has_work() or inflight is not None:
            if not sched.has_work() and inflight is None:
                now[0] = max(now[0], heap[0][0])  # idle: jump to the next arrival
            add_arrivals()
            if sched.step >= max_steps:
                raise RuntimeError(f"no progress after {max_steps} steps")
            batch = sched.schedule()
            if not batch:
                sched.cancel_pending()
                if inflight is not None:
                    now[0] = max(now[0], inflight.end)
                    complete(inflight)
                    inflight = None
                elif heap:
                    now[0] = max(now[0], heap[0][0])
                else:
                    raise RuntimeError(f"step {sched.step}: {len(sched.waiting)} waiting requests can never be "
                                       "admitted")
                continue
            ids = [self._token(s.req, outputs) if s.need_logits else -1 for s in batch.seqs]
            start = max(now[0], inflight.end) if inflight is not None else now[0]
            cur = _InFlight(batch, ids, now[0], start + float(self.cost(batch, start)))
            sched.advance(batch)
            if overlap:
                if inflight is not None:
                    now[0] = max(now[0], inflight.end)
                    complete(inflight)
                inflight = cur
            else:
                now[0] = cur.end
                complete(cur)
        steps = sched.trace_records()
        recs = request_records(done, steps)
        summary = summarize(recs, steps, sched)
        summary["sim_wall_s"] = time.perf_counter() - wall0
        return SimResult(recs, steps, summary, sched)

    @staticmethod
    def _token(req: Req, outputs: Mapping[str, Sequence[int]] | None) -> int:
        """The id this request 'samples' next: the recorded one, or a fake id in [1, 1000)."""
        if req.max_new_tokens == 0:
            return -1
        k = len(req.output_ids)
        if outputs is not None and req.rid in outputs and k < len(outputs[req.rid]):
            return int(outputs[req.rid][k])
        return 1 + (req.seq_no * 7919 + k * 104729) % 999


def simulate(requests: Sequence[WorkloadRequest], arrivals: Sequence[float] | Mapping[str, float] | None = None,
             *, cost: StepCost, **options: Any) -> SimResult:
    """Simulator(cost, **options).run(requests, arrivals): one call for notebooks."""
    run_kw = {k: options.pop(k) for k in ("outputs", "max_steps") if k in options}
    return Simulator(cost, **options).run(requests, arrivals, **run_kw)
