"""Scheduler: continuous batching over a RadixCache (host only, no JAX).

The engine's loop (nano-vllm style; one schedule/process pair per step):

    sched.add_request(Req("r1", prompt_ids, max_new_tokens=64))
    while sched.has_work():
        batch = sched.schedule()                  # host: decide + allocate pages
        step_in = builder.build(batch)            # host: padded StepInput
        next_ids = run_model(step_in)             # device
        for req in sched.process_results(batch, next_ids):   # = advance(batch) + fill(batch, ids)
            if stop_condition(req):
                sched.finish(req, reason)         # KV -> radix cache; pages freed

A step = decodes of running requests + chunks of unfinished prefills + newly
admitted requests (see schedule()). finish()/abort() may be called at any time
between steps. The engine calls advance(batch) right after dispatching a step and
fill(batch, ids) once its results are read back; in between it may schedule and
dispatch the next step (overlap scheduling; scheduler/advance.py).
"""
from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jaxsgl.cache.page_pool import PagePool
from jaxsgl.cache.radix_cache import RadixCache
from jaxsgl.scheduler.admission import admit, common_prefix_len  # noqa: F401  (common_prefix_len: re-exported)
from jaxsgl.scheduler.batch import ScheduledBatch, SeqWork
from jaxsgl.scheduler.config import SchedulerConfig
from jaxsgl.scheduler.advance import advance_requests, fill_requests, trim_placeholders
from jaxsgl.scheduler.integrity import check_scheduler_integrity
from jaxsgl.scheduler.kv import ReqKV
from jaxsgl.scheduler.policy import SchedulePolicy, make_schedule_policy
from jaxsgl.scheduler.request import Req, ReqStatus
from jaxsgl.scheduler.trace import StepTrace


@dataclass
class SchedulerStats:
    """Totals since construction. hit_rate counts prompt tokens at each request's first admission."""
    num_added: int = 0
    num_finished: int = 0
    num_aborted: int = 0
    num_retractions: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0

    @property
    def hit_rate(self) -> float:
        return self.cached_prompt_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class Scheduler:
    """Waiting queue + running set + admission/retraction over one RadixCache."""

    def __init__(self, cache: RadixCache, config: SchedulerConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or SchedulerConfig()
        self.cache = cache
        self.pool = cache.pool
        self.page_size = cache.page_size
        self.kv = ReqKV(cache)
        self.policy: SchedulePolicy = make_schedule_policy(self.config.schedule_policy, self.config.random_seed)
        self.clock = clock
        self.waiting: list[Req] = []
        self.running: list[Req] = []   # admission order
        self.requests: dict[str, Req] = {}  # live (waiting or running) requests by rid
        self.step = 0
        self.new_token_ratio = self.config.init_new_token_ratio
        self.trace: deque[StepTrace] = deque(maxlen=self.config.trace_capacity)  # ring buffer
        self.stats = SchedulerStats()
        self._seq_no = 0
        self._pending_batch: ScheduledBatch | None = None
        self.in_flight: list[ScheduledBatch] = []  # advanced, not yet filled (overlap), oldest first

    @classmethod
    def create(cls, num_pages: int, page_size: int = 1, *, eviction_policy: str = "lru",
               disable_radix_cache: bool = False, reserve_dummy_page: bool = False,
               clock: Callable[[], float] = time.monotonic, **config: object) -> Scheduler:
        """Build pool + cache + scheduler from SGLang-style option names."""
        pool = PagePool(num_pages, page_size, reserve_dummy_page=reserve_dummy_page)
        cache = RadixCache(pool, eviction_policy, disable=disable_radix_cache)
        return cls(cache, SchedulerConfig(**config), clock=clock)  # type: ignore[arg-type]

    # ------------------------------------------------------------ engine API
    def add_request(self, req: Req) -> Req:
        """Queue a new request. Raises ValueError if it can never fit."""
        if req.rid in self.requests:
            raise ValueError(f"duplicate request id {req.rid!r}")
        self.check_fits(len(req.prompt_ids), req.max_new_tokens)
        req.status = ReqStatus.WAITING
        req.arrival_time = self.clock() if req.arrival_time is None else req.arrival_time
        req.seq_no, self._seq_no = self._seq_no, self._seq_no + 1
        req.enqueue_step = self.step
        self.waiting.append(req)
        self.requests[req.rid] = req
        self.stats.num_added += 1
        return req

    def check_fits(self, prompt_len: int, max_new_tokens: int) -> None:
        """The one length check: raise ValueError unless a request of this size can ever run
        (non-empty prompt, max_new_tokens >= 0, within the context length and the KV pool)."""
        if prompt_len <= 0:
            raise ValueError("empty prompt")
        if max_new_tokens is None or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        total = prompt_len + max_new_tokens
        limit = self.config.max_context_len
        if limit is not None and total > limit:
            raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                             f"context length {limit}")
        if self.pool.pages_for(total) > self.pool.capacity:
            raise ValueError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                             f"KV pool ({self.pool.capacity} pages of {self.page_size})")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def get(self, rid: str) -> Req | None:
        return self.requests.get(rid)

    def schedule(self) -> ScheduledBatch:
        """Plan one step: decode every running request, continue unfinished prefills and
        admit waiting requests within the budgets; retract running requests if their
        pages cannot be found. Mutates queues, requests' pages/locks, the cache (evictions)
        and appends a StepTrace. An empty batch means there is nothing to run."""
        if self._pending_batch is not None:
            raise RuntimeError("schedule() called twice without advance() or cancel_pending()")
        self.step += 1
        trace = StepTrace(step=self.step)
        evicted_before = self.cache.stats.evicted_pages
        budget = [self.config.prefill_budget]  # mutable prefill-token budget shared by both phases
        if self.config.mixed_batches:
            seqs = self._plan_running(budget, trace, decode=True, extend=True)
            seqs += admit(self, budget, trace)
        else:
            seqs = self._plan_running(budget, trace, decode=False, extend=True)
            seqs += admit(self, budget, trace)
            if not seqs:
                seqs = self._plan_running(budget, trace, decode=True, extend=False)
        if any(not s.is_prefill for s in seqs):
            self.new_token_ratio = max(self.config.min_new_token_ratio,
                                       self.new_token_ratio - self.config.new_token_ratio_decay)
        self._fill_trace(trace, seqs, evicted_before)
        batch = ScheduledBatch(self.step, seqs, trace)
        self._pending_batch = batch
        return batch

    def process_results(self, batch: ScheduledBatch, next_token_ids: Sequence[int],
                        finished: Sequence[bool] | None = None) -> list[Req]:
        """A synchronous step's results: advance(batch) then fill(batch, next_token_ids) (a
        negative id appends nothing), then finish sequences flagged in `finished`.
        next_token_ids is indexed like batch.seqs (padding rows beyond are ignored).
        Returns the requests that received a token (the caller checks their stop conditions)."""
        self.advance(batch)
        updated = self.fill(batch, next_token_ids)
        if finished is not None:
            for i, seq in enumerate(batch.seqs):
                if finished[i] and not seq.req.is_done:
                    self.finish(seq.req)
        return updated

    def advance(self, batch: ScheduledBatch) -> None:
        """Apply the last scheduled (now dispatched) step optimistically: placeholder ids,
        kv_len, prefix caching (advance.advance_requests). The batch waits in in_flight."""
        if batch is not self._pending_batch:
            raise RuntimeError(f"advance for step {batch.step}, expected the last scheduled batch")
        self._pending_batch = None
        advance_requests(batch, self.kv)
        self.in_flight.append(batch)

    def fill(self, batch: ScheduledBatch, next_token_ids: Sequence[int]) -> list[Req]:
        """Give the oldest advanced batch its sampled ids (advance.fill_requests)."""
        if not self.in_flight or batch is not self.in_flight[0]:
            raise RuntimeError(f"fill for step {batch.step}, expected the oldest advanced batch")
        self.in_flight.pop(0)
        return fill_requests(batch, next_token_ids)

    def cancel_pending(self) -> None:
        """Forget the last scheduled batch without running it (it must be empty, or all of
        its requests must have ended: e.g. after a failed step)."""
        batch, self._pending_batch = self._pending_batch, None
        if batch is not None and any(not s.req.is_done for s in batch.seqs):
            raise RuntimeError(f"cannot cancel step {batch.step}: it has live requests")

    def discard_in_flight(self) -> None:
        """Forget every advanced-but-unfilled batch (after a failed step; every request in
        them must have ended already, e.g. through abort())."""
        for batch in self.in_flight:
            live = [s.req for s in batch.seqs if not s.req.is_done]
            if live:
                raise RuntimeError(f"cannot discard step {batch.step}: {live[:3]} still live")
        self.in_flight.clear()

    def finish(self, req: Req | str, reason: object = None) -> Req:
        """End a request: insert its computed KV into the cache, free the rest, unlock."""
        return self._end(req, ReqStatus.FINISHED, reason)

    def abort(self, rid: Req | str, reason: object = "abort") -> Req | None:
        """Cancel a waiting or running request (no-op, returning None, if unknown or done)."""
        key = rid.rid if isinstance(rid, Req) else rid
        if key not in self.requests:
            return None
        return self._end(key, ReqStatus.ABORTED, reason)

    def jump_forward(self, req: Req, rollback: int, token_ids: Sequence[int]) -> None:
        """Constrained decoding's jump-forward: drop the last `rollback` (0 or 1) known output
        tokens and append `token_ids`, decided without sampling; the next step feeds them as one
        extend. A step in flight that already feeds the request (overlap) is rolled back for it:
        its row is discarded and its placeholder trimmed; the KV it writes for the last known
        token is kept unless that token is rolled back (then it is rewritten by the extend).
        The radix tree never holds these tokens' KV until they are computed."""
        if req.status != ReqStatus.RUNNING or rollback not in (0, 1) or req.num_placeholders > 1:
            raise ValueError(f"{req}: cannot jump forward (rollback={rollback})")
        if req.num_placeholders:
            for batch in self.in_flight:
                for seq in batch.seqs:
                    if seq.req is req and seq.need_logits and not seq.discarded:
                        seq.discarded = True
            trim_placeholders(req)
        if rollback:
            if req.num_generated < 1:
                raise ValueError(f"{req}: no output token to roll back")
            req.output_ids.pop()
            req.kv_len = min(req.kv_len, req.seq_len)  # the rolled-back token's KV (if any) is dropped
            assert req.kv_len >= req.num_tree_pages * self.page_size, "the tree never holds an unfilled token"
        req.output_ids.extend(int(t) for t in token_ids)

    def trace_records(self, since_step: int = 0) -> list[dict]:
        """The per-step trace (the last config.trace_capacity steps) as a list of dicts, from
        step `since_step` on (pd.DataFrame(sched.trace_records())). Safe to call from another thread
        while the loop appends: the ring buffer is copied first (one C call, which holds the GIL),
        since iterating the deque itself raises when an append lands mid-iteration. Steps are appended
        in increasing order, so only the records asked for are visited (a poller asking for the last few
        steps of a long run pays for those, not for the whole buffer)."""
        records = []
        for t in reversed(self.trace.copy()):
            if t.step < since_step:
                break
            records.append(t.as_dict())
        records.reverse()
        return records

    # -------------------------------------------------------------- planning
    def _take_chunk(self, budget: list[int], pending: int) -> int:
        """Tokens of a `pending`-token prefill to run now; deducts them from the budget."""
        left = budget[0]
        if pending <= left:
            n = pending
        elif self.config.chunking:
            n = left // self.page_size * self.page_size
        else:  # no chunking: a long prompt runs whole, alone among prefills
            n = pending if left == self.config.prefill_budget else 0
        budget[0] = max(left - n, 0)
        return n

    def _work(self, req: Req, n: int, decoding: bool | None = None) -> SeqWork:
        """decoding: req.is_decoding, when the caller knows it already."""
        kv = req.kv_len
        return SeqWork(req, req.token_slice(kv, kv + n), kv, req.pages, need_logits=kv + n == req.seq_len,
                       is_prefill=not (req.is_decoding if decoding is None else decoding))

    def _plan_running(self, budget: list[int], trace: StepTrace, *, decode: bool, extend: bool) -> list[SeqWork]:
        """Work for already-running requests; retracts some if their pages cannot be found."""
        plan: list[tuple[Req, int, bool]] = []  # (request, tokens to feed, decoding)
        for req in self.running:
            if req.num_placeholders and (req.remaining_new_tokens == 0 or req.needs_known_tokens):
                continue  # its last token is in flight: it ends, or can be planned, once that is filled
            decoding = req.is_decoding
            if decoding:
                if decode:
                    plan.append((req, 1, True))
            elif extend and req.num_pending > 0:
                n = self._take_chunk(budget, req.num_pending)
                if n > 0:
                    plan.append((req, n, False))
        while True:
            need = sum(max(self.pool.pages_for(r.kv_len + n) - len(r.pages), 0) for r, n, _ in plan)
            if need <= self.kv.available_pages():
                break
            victim = self._pick_victim()
            if victim is None:
                raise RuntimeError(f"cannot find {need} pages even with every request retracted")
            self._retract(victim, trace)
            plan = [p for p in plan if p[0] is not victim]
        for req, n, _ in plan:
            ok = self.kv.ensure_pages(req, req.kv_len + n)
            assert ok, "pages were counted as available"
        return [self._work(req, n, decoding) for req, n, decoding in plan]

    def _pick_victim(self) -> Req | None:
        """Retraction order: lowest priority, then fewest output tokens, then latest arrival."""
        if not self.running:
            return None
        return min(self.running, key=lambda r: (r.priority, len(r.output_ids), -r.seq_no))

    def _retract(self, req: Req, trace: StepTrace) -> None:
        self.running.remove(req)
        self.kv.release(req, insert=self.config.retract_insert)
        req.status = ReqStatus.WAITING
        req.enqueue_step = self.step
        req.num_retractions += 1
        self.waiting.append(req)
        self.stats.num_retractions += 1
        trace.num_retracted += 1
        self.new_token_ratio = self.config.init_new_token_ratio

    # ------------------------------------------------------------ bookkeeping
    def _end(self, req: Req | str, status: ReqStatus, reason: object) -> Req:
        req = self.requests[req] if isinstance(req, str) else req
        if req.is_done:
            return req
        trim_placeholders(req)  # tokens of in-flight steps are dropped; only known ids are cached
        if req.status == ReqStatus.RUNNING:
            self.running.remove(req)
            self.kv.release(req, insert=True)
        else:
            self.waiting.remove(req)
        req.status, req.finish_reason = status, reason
        del self.requests[req.rid]
        if status == ReqStatus.FINISHED:
            self.stats.num_finished += 1
        else:
            self.stats.num_aborted += 1
        return req

    def _fill_trace(self, trace: StepTrace, seqs: list[SeqWork], evicted_before: int) -> None:
        trace.num_seqs = len(seqs)
        trace.num_prefill_seqs = sum(s.is_prefill for s in seqs)
        trace.num_decode_seqs = trace.num_seqs - trace.num_prefill_seqs
        trace.new_tokens = sum(s.num_new for s in seqs)
        trace.prefill_tokens = sum(s.num_new for s in seqs if s.is_prefill)
        trace.evicted_pages = self.cache.stats.evicted_pages - evicted_before
        trace.queue_len = len(self.waiting)
        trace.num_running = len(self.running)
        trace.free_pages = self.pool.num_free
        trace.evictable_pages = self.cache.evictable_pages
        trace.locked_pages = self.cache.locked_pages
        trace.new_token_ratio = self.new_token_ratio
        if seqs:  # an empty step runs nothing: it is not recorded
            self.trace.append(trace)

    def check_integrity(self) -> None:
        """Raise AssertionError unless requests, locks, the tree and the pool agree:
        free + evictable + locked + private pages == capacity, every lock_ref is
        explained by a running request, waiting requests hold nothing."""
        check_scheduler_integrity(self.cache, self.running, self.waiting, self.requests,
                                  self.config.max_running_requests)
