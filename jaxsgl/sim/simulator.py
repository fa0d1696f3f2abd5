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

A chained call (`after`) arrives think_time after the call it waits for finishes; with `client` (a
ChainedClient, client.py: measured by benchmarks/client_profile.py) instead its turnaround, or, for the share of
calls the client queues inline (drawn per call), inline_turnaround after the finish, with the loop's next
drain waiting for it: then it makes the step scheduled next.

A step dispatched with nothing in flight (an idle engine; every step of the sync loop) also takes
the cost's `idle_start` seconds (LinearCost.idle_start; 0 for costs without it): the host work that
the overlapped loop hides under the previous step.

`complete` fills the step's tokens and finishes requests that reached max_new_tokens (the engine's
length stop with ignore_eos). Requests arrive at the given times; one with `after` set arrives
when that request finishes (plus think_time), unless `arrivals` gives it a time. When nothing is
running the clock jumps to the next arrival. Output tokens are fake ids below 1000 (or `outputs`,
recorded ids to replay). Options are the Engine's (EngineOptions names: schedule_policy,
radix_eviction_policy, max_total_tokens, chunked_prefill_size, ...); `scheduler_options` sets any
other SchedulerConfig field. `Simulator.start()` gives the same loop one iteration at a time
(SimRun), so a caller can advance several simulated replicas on one clock. A LinearCost's steps are
padded to the buckets an Engine with these options would use, not the profiled engine's. Host only, no JAX.
"""
from __future__ import annotations

import heapq
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jaxsgl.engine.options import EngineOptions
from jaxsgl.scheduler import Req, ScheduledBatch, Scheduler
from jaxsgl.scheduler.batch import StepInputBuilder
from jaxsgl.scheduler.records import RequestTimes, as_frame, request_records
from jaxsgl.sim.client import ChainedClient
from jaxsgl.sim.cost_model import LinearCost, Padding, StepCost
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

    def __init__(self, cost: StepCost, *, think_time: float = 0.0, client: ChainedClient | None = None,
                 check: bool = False, scheduler_options: Mapping[str, Any] | None = None,
                 **engine_options: Any) -> None:
        self.think_time = think_time
        self.client = client
        self.check = check
        self.idle_start = float(getattr(cost, "idle_start", 0.0))  # extra s of a step dispatched to an idle engine
        self.opts = EngineOptions.from_kwargs(None, engine_options)
        self.scheduler_options = dict(scheduler_options or {})
        self.cost = self._padded_as_simulated(cost)

    def _padded_as_simulated(self, cost: StepCost) -> StepCost:
        """cost with its steps padded to the token and sequence buckets that an Engine with these options
        uses (StepInputBuilder.for_engine), not those of the profiled engine; page buckets stay the
        profile's (they follow its attention impl)."""
        if not isinstance(cost, LinearCost) or cost.padding is None:
            return cost
        # this class's scheduler, not a subclass's (whose make_scheduler may need its own __init__ done first)
        limits = Simulator.make_scheduler(self, lambda: 0.0).config
        b = StepInputBuilder.for_engine(self.opts.page_size, prefill_budget=limits.prefill_budget,
                                        max_running_requests=self.opts.max_running_requests,
                                        max_context_len=limits.max_context_len, seq_buckets=self.opts.seq_buckets)
        p = cost.padding
        return cost.with_padding(Padding(b.token_buckets, b.seq_buckets, p.page_buckets, p.page_size))

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

    def start(self, *, outputs: Mapping[str, Sequence[int]] | None = None,
              max_steps: int = 10_000_000) -> SimRun:
        """A fresh simulation advanced by the caller, one loop iteration at a time (SimRun):
        several on one clock make a multi-replica simulation (experiments/multi_instance.py)."""
        return SimRun(self, outputs=outputs, max_steps=max_steps)

    def run(self, requests: Sequence[WorkloadRequest], arrivals: Sequence[float] | Mapping[str, float] | None = None,
            *, outputs: Mapping[str, Sequence[int]] | None = None, max_steps: int = 10_000_000) -> SimResult:
        """Simulate `requests` to completion. arrivals: one time per request without `after`, in
        order (a sequence), or rid -> time for any request (a mapping); None = all at t = 0."""
        run = self.start(outputs=outputs, max_steps=max_steps)
        timed = dict(arrivals) if isinstance(arrivals, Mapping) else {}
        roots = [r for r in requests if r.rid in timed or getattr(r, "after", None) is None]
        if arrivals is None or isinstance(arrivals, Mapping):
            times = [timed.get(r.rid, 0.0) for r in roots]
        else:
            if len(arrivals) != len(roots):
                raise ValueError(f"{len(arrivals)} arrival times for {len(roots)} requests without `after`")
            times = list(arrivals)
        for r, t in zip(roots, times):
            run.submit(r, t)
        for r in requests:
            if r.rid not in timed and getattr(r, "after", None) is not None:
                run.children.setdefault(r.after, []).append(r)  # type: ignore[attr-defined]
        while run.next_time() is not None:
            run.step()
        return run.result()

    @staticmethod
    def _token(req: Req, outputs: Mapping[str, Sequence[int]] | None) -> int:
        """The id this request 'samples' next: the recorded one, or a fake id in [1, 1000)."""
        if req.max_new_tokens == 0:
            return -1
        k = len(req.output_ids)
        if outputs is not None and req.rid in outputs and k < len(outputs[req.rid]):
            return int(outputs[req.rid][k])
        return 1 + (req.seq_no * 7919 + k * 104729) % 999


class SimRun:
    """One simulation in progress: a fresh Scheduler on its own clock, advanced one iteration of
    the engine's loop at a time. Simulator.run drives one to completion; a caller can also drive
    several on one clock (a router in front of replicas):

        run = sim.start()
        run.submit(request, t)                # arrives at time t
        while (t := run.next_time()) is not None:
            finished = run.step()             # [(rid, finish time)] of this iteration
        res = run.result()

    next_time() is the simulated time of the next iteration (None: idle, nothing queued). An
    iteration at time t admits every submitted request with arrival <= t, so a caller that
    submits everything arriving up to t before stepping at t sees what the single run sees.
    `children[rid]`: requests that arrive when `rid` finishes (plus think_time); empty unless
    the caller fills it. `live[rid]`: the (Req, RequestTimes) of a submitted, unfinished request
    that has arrived; `queued()` the rids submitted that have not arrived yet."""

    def __init__(self, sim: Simulator, *, outputs: Mapping[str, Sequence[int]] | None = None,
                 max_steps: int = 10_000_000) -> None:
        self.sim = sim
        self.now = 0.0
        self.sched = sim.make_scheduler(lambda: self.now)
        self.outputs = outputs
        self.max_steps = max_steps
        self.overlap = not sim.opts.disable_overlap_schedule
        self.children: dict[str, list[WorkloadRequest]] = {}
        self.live: dict[str, tuple[Req, RequestTimes]] = {}
        self.done: list[tuple[Req, RequestTimes]] = []
        self._by_rid: dict[str, WorkloadRequest] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._seq = 0
        self._inflight: _InFlight | None = None
        self._hold = 0.0  # the loop's next drain waits until then for calls queued inline (ChainedClient)
        self._finished: list[tuple[str, float]] = []
        self._wall0 = time.perf_counter()

    def submit(self, request: WorkloadRequest, t: float) -> None:
        """`request` arrives at time t (ties: in submission order)."""
        self._by_rid[request.rid] = request
        heapq.heappush(self._heap, (t, self._seq, request.rid))
        self._seq += 1

    def queued(self) -> list[str]:
        """rids submitted that have not arrived yet."""
        return [rid for _, _, rid in self._heap]

    def next_time(self) -> float | None:
        """Time of the next loop iteration; None when there is nothing to do until a submit."""
        if self.sched.has_work() or self._inflight is not None:
            return max(self.now, self._hold)
        if self._heap:
            return max(self.now, self._heap[0][0])
        return None

    def step(self) -> list[tuple[str, float]]:
        """One iteration of the engine's loop (see the module docstring); returns the (rid,
        finish time) of the requests it finished."""
        self._finished = []
        sched = self.sched
        self.now = max(self.now, self._hold)  # inline calls of the last completion are queued by then
        if not sched.has_work() and self._inflight is None:
            self.now = max(self.now, self._heap[0][0])  # idle: jump to the next arrival
        self._add_arrivals()
        if sched.step >= self.max_steps:
            raise RuntimeError(f"no progress after {self.max_steps} steps")
        batch = sched.schedule()
        if not batch:
            sched.cancel_pending()
            if self._inflight is not None:
                self.now = max(self.now, self._inflight.end)
                self._complete(self._inflight)
                self._inflight = None
            elif self._heap:
                self.now = max(self.now, self._heap[0][0])
            else:
                raise RuntimeError(f"step {sched.step}: {len(sched.waiting)} waiting requests can never be "
                                   "admitted")
            return self._finished
        ids = [self.sim._token(s.req, self.outputs) if s.need_logits else -1 for s in batch.seqs]
        if self._inflight is not None:
            start, extra = max(self.now, self._inflight.end), 0.0
        else:
            start, extra = self.now, self.sim.idle_start
        cur = _InFlight(batch, ids, self.now, start + float(self.sim.cost(batch, start)) + extra)
        sched.advance(batch)
        if self.overlap:
            if self._inflight is not None:
                self.now = max(self.now, self._inflight.end)
                self._complete(self._inflight)
            self._inflight = cur
        else:
            self.now = cur.end
            self._complete(cur)
        return self._finished

    def result(self) -> SimResult:
        """Records and summary of the requests finished so far."""
        steps = self.sched.trace_records()
        recs = request_records(self.done, steps)
        summary = summarize(recs, steps, self.sched)
        summary["sim_wall_s"] = time.perf_counter() - self._wall0
        return SimResult(recs, steps, summary, self.sched)

    def _add_arrivals(self) -> None:
        while self._heap and self._heap[0][0] <= self.now:
            t, _, rid = heapq.heappop(self._heap)
            r = self._by_rid[rid]
            req = Req(rid, list(r.prompt_ids), max_new_tokens=r.max_new_tokens,
                      priority=getattr(r, "priority", 0), arrival_time=t)
            self.sched.add_request(req)
            self.live[rid] = (req, RequestTimes(t))

    def _end_request(self, req: Req, t: float) -> None:
        self.sched.finish(req, "length")
        _, times = self.live.pop(req.rid)
        times.finish = t
        self.done.append((req, times))
        self._finished.append((req.rid, t))
        client = self.sim.client
        for child in self.children.get(req.rid, ()):
            if client is None:
                self.submit(child, t + self.sim.think_time)
            elif client.is_inline(child.rid, self.sim.opts.random_seed):
                self.submit(child, t + client.inline_turnaround)
                self._hold = max(self._hold, t + client.inline_turnaround)
            else:
                self.submit(child, t + client.turnaround)

    def _complete(self, f: _InFlight) -> None:
        f.batch.trace.step_time = f.end - f.dispatch
        f.batch.trace.end_time = f.end
        for req in self.sched.fill(f.batch, f.ids):
            if req.is_done:
                continue
            times = self.live[req.rid][1]
            if req.max_new_tokens > 0 and times.first_token is None:
                times.first_token = f.end
            if req.num_generated >= req.max_new_tokens:
                self._end_request(req, f.end)
        if self.sim.check:
            self.sched.check_integrity()


def simulate(requests: Sequence[WorkloadRequest], arrivals: Sequence[float] | Mapping[str, float] | None = None,
             *, cost: StepCost, **options: Any) -> SimResult:
    """Simulator(cost, **options).run(requests, arrivals): one call for notebooks."""
    run_kw = {k: options.pop(k) for k in ("outputs", "max_steps") if k in options}
    return Simulator(cost, **options).run(requests, arrivals, **run_kw)
