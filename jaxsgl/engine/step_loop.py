"""StepLoop: schedule -> build -> dispatch -> advance -> (read back -> fill -> decide), one step per call.

Synchronous (EngineOptions.disable_overlap_schedule) and overlapped loops share every call;
only the order differs:

    sync:     schedule N -> dispatch N -> advance N -> complete N
    overlap:  schedule N+1 -> dispatch N+1 (its decode tokens come from N's device output)
              -> advance N+1 (placeholders) -> complete N

so with overlap the host work of N (stop checks, detokenizing) and the scheduling of N+1
run while N+1 runs on the device. `complete` reads a step back and hands it to
RequestTracker.on_step_output, the one place that decides each request's fate.

Fallback: a step waits for the one in flight (StepTrace.sync_fallback) when a running
request uses repetition/frequency/presence penalties and has a token still on the device,
because penalties need every output id on the host.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from jaxsgl.engine.grammar import GrammarRuntime
from jaxsgl.engine.model_runner import ModelRunner, StepHandle
from jaxsgl.engine.outputs import RequestTracker
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.sampling import SamplingFlags
from jaxsgl.engine.step_sampling import build_sampling_input
from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler import ScheduledBatch, Scheduler, StepInputBuilder
from jaxsgl.scheduler.advance import placeholder_sources


@dataclass
class InFlight:
    """A dispatched, advanced step whose results have not been read back."""

    batch: ScheduledBatch
    states: list[RequestState]
    step: StepInput
    flags: SamplingFlags
    handle: StepHandle
    t0: float


class StepLoop:
    """Runs steps for the engine's loop thread (only that thread calls it)."""

    def __init__(self, scheduler: Scheduler, builder: StepInputBuilder, runner: ModelRunner,
                 tracker: RequestTracker, grammar: GrammarRuntime | None = None, *, overlap: bool, check_integrity: bool = False,
                 step_time_capacity: int = 100_000) -> None:
        self.scheduler = scheduler
        self.builder = builder
        self.runner = runner
        self.tracker = tracker
        self.grammar = grammar
        self.overlap = overlap
        self.check_integrity = check_integrity
        self.inflight: InFlight | None = None
        self.step_times: deque[float] = deque(maxlen=step_time_capacity)  # ring buffer, seconds

    def step(self) -> None:
        """Schedule and dispatch the next step; complete the previous one (overlap) or this one."""
        sched = self.scheduler
        prev, synced = self.inflight, False
        if prev is not None and self._needs_host_ids():
            self.inflight = None
            self._complete(prev)
            prev, synced = None, True
        t_start = time.perf_counter()
        batch = sched.schedule()
        if not batch:
            sched.cancel_pending()
            self.inflight = None
            if prev is None:
                time.sleep(0.001)  # nothing admissible right now (e.g. every page is locked)
            else:
                self._complete(prev)
            return
        step = self.builder.build(batch)
        states = self.tracker.states_of(batch)
        src = placeholder_sources(batch, step, prev.batch if prev is not None else None)
        si, flags = build_sampling_input(batch, states, step, self.tracker.eos_ids, src, self.grammar)
        t0 = time.perf_counter()
        tables = self.grammar.tables if self.grammar is not None else None
        handle = self.runner.run_async(step, si, flags, prev.handle if prev is not None else None, src,
                                       grammar=tables)
        batch.trace.prepare_time, batch.trace.dispatch_time = t0 - t_start, time.perf_counter() - t0
        sched.advance(batch)
        batch.trace.sync_fallback = synced
        cur = InFlight(batch, states, step, flags, handle, t0)
        self.inflight = cur if self.overlap else None
        if prev is not None:
            self._complete(prev)
        if not self.overlap:
            self._complete(cur)

    def reset(self) -> None:
        """After a failed step (every request already aborted): forget what was in flight."""
        self.inflight = None
        self.scheduler.cancel_pending()
        self.scheduler.discard_in_flight()

    def _needs_host_ids(self) -> bool:
        states = self.tracker.states
        return any(r.num_placeholders and r.rid in states and states[r.rid].params.uses_penalties
                   for r in self.scheduler.running)

    def _complete(self, f: InFlight) -> None:
        """Read a step back (blocks on it) and apply it (RequestTracker.on_step_output)."""
        trace, t_wait = f.batch.trace, time.perf_counter()
        out = self.runner.collect(f.handle)
        t_out = time.perf_counter()
        trace.step_time, trace.wait_time = t_out - f.t0, t_out - t_wait
        self.step_times.append(trace.step_time)
        self.tracker.on_step_output(f.batch, f.states, f.step, f.flags.input_logprobs, out)
        if self.check_integrity:
            self.scheduler.check_integrity()
        trace.end_time = time.perf_counter()
        trace.process_time = trace.end_time - t_out
