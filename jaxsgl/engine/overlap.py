"""Overlap scheduling in the engine loop (on unless EngineOptions.disable_overlap_schedule).

The synchronous loop (Engine._step) reads step N's tokens back and does its host work
(stop checks, detokenizing, scheduling, packing) before dispatching step N+1, so the
device idles in between. OverlapLoop keeps at most one step in flight instead:

    schedule N+1 -> build -> dispatch N+1 (its decode tokens come from N's device output)
                 -> advance N+1 (placeholders) -> read N back -> fill N -> stop checks

so the host work of N (and the scheduling of N+1) runs while N+1 runs on the device.
The host side of this (placeholders, fill, trimming) is in jaxsgl/scheduler/overlap.py.

Fallback: a step waits for the one in flight (and is counted in StepTrace.sync_fallback)
when a running request uses repetition/frequency/presence penalties and has a token
still on the device, because penalties need every output id on the host. Everything
else (input logprobs, max_new_tokens=0, top logprobs, n > 1, stop strings, aborts,
streaming, priorities, retraction) runs overlapped.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from jaxsgl.engine.model_runner import StepHandle
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.sampling import SamplingFlags
from jaxsgl.engine.step_sampling import build_sampling_input, record_logprobs
from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler import ScheduledBatch
from jaxsgl.scheduler.overlap import placeholder_sources

if TYPE_CHECKING:
    from jaxsgl.engine.engine import Engine


@dataclass
class InFlight:
    """A dispatched, advanced step whose results have not been read back."""

    batch: ScheduledBatch
    states: list[RequestState]
    step: StepInput
    flags: SamplingFlags
    handle: StepHandle
    t0: float


class OverlapLoop:
    """The engine's step with one step in flight. Runs on the loop thread only."""

    def __init__(self, engine: Engine) -> None:
        self.eng = engine
        self.inflight: InFlight | None = None

    def step(self) -> None:
        """Schedule and dispatch the next step, then process the previous one's results."""
        eng, sched = self.eng, self.eng.scheduler
        prev, synced = self.inflight, False
        if prev is not None and self._needs_host_ids():
            self.inflight = None
            self._complete(prev)
            prev, synced = None, True
        batch = sched.schedule()
        if not batch:
            sched.process_results(batch, [])
            if prev is None:
                time.sleep(0.001)  # nothing admissible right now (e.g. every page is locked)
            else:
                self.inflight = None
                self._complete(prev)
            return
        step = eng.builder.build(batch)
        states = [eng.states[s.req.rid] for s in batch.seqs]
        si, flags = build_sampling_input(batch, states, step)
        src = placeholder_sources(batch, step, prev.batch if prev is not None else None)
        t0 = time.perf_counter()
        handle = eng.runner.run_async(step, si, flags, prev.handle if prev is not None else None, src)
        sched.advance(batch)
        batch.trace.sync_fallback = synced
        self.inflight = InFlight(batch, states, step, flags, handle, t0)
        if prev is not None:
            self._complete(prev)

    def reset(self) -> None:
        """After a failed step (every request already aborted): forget what was in flight."""
        self.inflight = None
        self.eng.scheduler.discard_in_flight()

    def _needs_host_ids(self) -> bool:
        states = self.eng.states
        return any(r.num_placeholders and r.rid in states and states[r.rid].params.uses_penalties
                   for r in self.eng.scheduler.running)

    def _complete(self, f: InFlight) -> None:
        """Read a step back (blocks on it), fill its placeholders, deliver tokens, check stops."""
        eng = self.eng
        out = eng.runner.collect(f.handle)
        f.batch.trace.step_time = time.perf_counter() - f.t0
        eng.step_times.append(f.batch.trace.step_time)
        if f.flags.input_logprobs:
            record_logprobs(f.batch, f.states, f.step, out)
        next_ids = eng._next_ids(f.batch, f.states, out)
        eng.scheduler.fill(f.batch, next_ids)
        eng._deliver(f.batch, f.states, next_ids, out)
        if eng.options.debug_check_integrity:
            eng.scheduler.check_integrity()
        f.batch.trace.end_time = time.perf_counter()

