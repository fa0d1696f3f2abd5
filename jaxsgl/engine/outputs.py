"""RequestTracker: the one place that decides what a step's output means for each request.

After a step is read back, `on_step_output` fills the scheduler's placeholders
(scheduler.fill) and then, per request that received a token, decides in this order:
length 0 (a prefill-only request), logprobs, stop tokens (eos / stop_token_ids, not before
min_new_tokens), the grammar (a finished constraint ends the request; a forced string is
appended by jump-forward), stop strings, max_new_tokens, and streams the new text. Both
the synchronous and the overlapped loop (engine/step_loop.py) call it; nothing else
finishes a request except aborts and failures, which also go through `finish`.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any

from jaxsgl.constrained import ConstraintError
from jaxsgl.engine.grammar import GrammarRuntime
from jaxsgl.engine.model_runner import StepOutputHost
from jaxsgl.engine.request_state import RequestState
from jaxsgl.engine.step_sampling import record_logprobs
from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler import Req, ScheduledBatch, Scheduler
from jaxsgl.scheduler.records import RequestTimes

GEN_SAMPLE_S = 0.1  # gen_history keeps one (time, count) sample per this many seconds of steps


class RequestTracker:
    """Live RequestStates by rid, and every decision about their outputs. Loop thread only
    (except `states` lookups by rid, which are dict reads)."""

    def __init__(self, scheduler: Scheduler, eos_ids: set[int], grammar: GrammarRuntime | None = None) -> None:
        self.scheduler = scheduler
        self.eos_ids = eos_ids
        self.grammar = grammar
        self.states: dict[str, RequestState] = {}
        self.finished: deque[tuple[Req, RequestTimes]] = deque(maxlen=100_000)  # ring buffer for records
        self.generated_tokens = 0  # sampled output tokens delivered since construction (jump-forward excluded)
        # (perf_counter, generated_tokens) after steps that generated, >= GEN_SAMPLE_S apart: gen_throughput()
        self.gen_history: deque[tuple[float, int]] = deque([(time.perf_counter(), 0)], maxlen=1024)

    def states_of(self, batch: ScheduledBatch) -> list[RequestState]:
        return [self.states[s.req.rid] for s in batch.seqs]

    def on_step_output(self, batch: ScheduledBatch, states: list[RequestState], step: StepInput,
                       input_logprobs: bool, out: StepOutputHost) -> None:
        """Apply a read-back step: fill its placeholders, then decide each request's fate.
        Mutates the scheduler (fill, finish), the states (text, logprobs, events)."""
        if input_logprobs:
            record_logprobs(batch, states, step, out)
        row_of = {id(s.req): i for i, s in enumerate(batch.seqs)}
        for req in self.scheduler.fill(batch, out.token_ids[:len(batch.seqs)].tolist()):  # Python ints: cheaper per row
            st = self.states.get(req.rid)
            if st is not None and st.req is req and not st.done:
                self._on_token(st, row_of[id(req)], out)
        self._sample_generated()

    def _sample_generated(self) -> None:
        h, n = self.gen_history, self.generated_tokens
        if n == h[-1][1]:
            return
        now = time.perf_counter()
        if len(h) >= 2 and now - h[-2][0] < GEN_SAMPLE_S:
            h[-1] = (now, n)
        else:
            h.append((now, n))

    def gen_throughput(self, window_s: float = 10.0) -> float:
        """Generated tokens per second over the last window_s seconds (shorter if the engine is younger);
        0 after window_s idle. Any thread (reads a copy of gen_history)."""
        h = list(self.gen_history)
        now = time.perf_counter()
        start = now - window_s
        base_t, base_n = h[0]
        for t, n in reversed(h):
            if t <= start:
                base_t, base_n = t, n
                break
        span = now - max(start, base_t)
        return (h[-1][1] - base_n) / span if span > 0 else 0.0

    def _on_token(self, st: RequestState, row: int, out: StepOutputHost) -> None:
        req, p = st.req, st.params
        if req.max_new_tokens == 0:
            return self.finish(st, {"type": "length", "length": 0})
        tok = req.output_ids[req.num_generated - 1]
        self.generated_tokens += 1
        if st.first_token_time is None:
            st.first_token_time = time.perf_counter()
        if st.return_logprob:
            st.output_logprobs.append((float(out.logprobs[row]), tok, None))
            if st.top_logprobs_num:
                st.output_top.append([(float(lp), int(t), None) for lp, t in
                                      zip(out.top_logprobs[row][:st.top_logprobs_num], out.top_ids[row])])
        may_stop = req.num_generated >= p.min_new_tokens  # (eos is masked before that: sampling.py)
        g = st.grammar
        if g is not None and g.error is not None:  # its host matcher failed while masking this token
            return self.fail(st, g.error)
        if g is not None and tok in self.eos_ids:  # the mask allows eos only where the match is complete
            return self.finish(st, {"type": "stop", "matched": tok})
        if may_stop and (tok in p.stop_token_ids or (tok in self.eos_ids and not p.ignore_eos)):
            return self.finish(st, {"type": "stop", "matched": tok})
        jump = None
        if g is not None:
            try:
                self.grammar.advance(st, tok, -1 if out.next_state is None else int(out.next_state[row]))
                jump = self._plan_jump(st, tok)
            except ConstraintError as e:  # a host matcher failed: this request alone fails
                return self.fail(st, e)
        if jump is not None and jump.rollback:
            if st.return_logprob:  # the rolled-back token is not part of the output
                st.output_logprobs.pop()
                if st.top_logprobs_num:
                    st.output_top.pop()
        else:
            st.text.append(tok)
        if jump is not None:
            self.scheduler.jump_forward(req, jump.rollback, jump.tokens)
            try:
                self.grammar.apply_jump_forward(st, jump)
            except ConstraintError as e:
                return self.fail(st, e)
            st.text.extend(jump.tokens)
            if st.return_logprob:  # appended without sampling: no logprob
                for t in jump.tokens:
                    st.output_logprobs.append((None, t, None))
                    if st.top_logprobs_num:
                        st.output_top.append([])
        if may_stop and st.text.stopped_at is not None:
            return self.finish(st, {"type": "stop", "matched": st.text.stopped_at})
        if g is not None and g.finished:  # only eos could follow: end now instead of sampling it
            return self.finish(st, {"type": "stop", "matched": None})
        if req.reached_max_new_tokens:
            return self.finish(st, {"type": "length", "length": req.max_new_tokens})
        if st.stream:
            st.push_increment()

    def _plan_jump(self, st: RequestState, tok: int):
        """A jump-forward for st after tok, if one fits in max_new_tokens with a token to spare."""
        jump = self.grammar.plan_jump_forward(st, tok)
        if jump is None:
            return None
        req = st.req
        if req.num_generated - jump.rollback + len(jump.tokens) >= req.max_new_tokens:
            return None
        return jump

    def finish(self, st: RequestState, reason: dict[str, Any], release: bool = True) -> None:
        """End a request: release its pages into the cache (unless already aborted in the
        scheduler), flush its text, wake its caller. Mutates the scheduler and self.states."""
        if release:
            self.scheduler.finish(st.req, reason)
        if self.grammar is not None and st.grammar is not None:
            self.grammar.release(st)
        st.text.flush()
        st.finish_reason = reason
        self.states.pop(st.req.rid, None)
        self.finished.append((st.req, RequestTimes(st.created, st.first_token_time, time.perf_counter())))
        st.close()

    def abort(self, st: RequestState) -> None:
        """Cancel a live request wherever it is (scheduler, grammar queue); its caller gets 'abort'."""
        if self.scheduler.abort(st.req.rid) is not None or st.req.rid not in self.scheduler.requests:
            self.finish(st, {"type": "abort"}, release=False)

    def fail(self, st: RequestState, error: BaseException) -> None:
        """Abort one request with an error (its caller's wait() raises it)."""
        st.error = error
        ended = self.scheduler.abort(st.req.rid) is not None or st.req.rid not in self.scheduler.requests
        if ended:
            self.finish(st, {"type": "abort", "message": str(error)}, release=False)

