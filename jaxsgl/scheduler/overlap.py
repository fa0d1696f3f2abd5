"""Overlap scheduling, host side: advance a step's requests before its results are read.

SGLang's overlap scheduler keeps the device busy by dispatching step N+1 before step
N's sampled tokens are back on the host. The scheduler therefore plans N+1 from an
*optimistic* state:

    batch = sched.schedule()              # step N+1, planned as if step N had completed
    src = placeholder_sources(batch, step_in, prev_batch)   # where N+1's unknown ids come from
    handle = dispatch(step_in, src)       # device: token_ids[t] = prev_tokens[src[t]] where src[t] >= 0
    sched.advance(batch)                  # kv_len += num_new; a PLACEHOLDER output id per sampled row
    ids = read_back(prev_handle)          # blocks on step N only
    for req in sched.fill(prev_batch, ids):   # PLACEHOLDERs of step N get their real ids
        if stop(req):
            sched.finish(req)             # trims its step-N+1 placeholder; inserts real tokens only

Invariants (checked by Scheduler.check_integrity):
  - the last req.num_placeholders output ids of a request are PLACEHOLDER, no other is;
  - the radix tree never holds a PLACEHOLDER: ReqKV.cache_prefix inserts at most the
    known tokens, and finish()/abort() trim the placeholders before releasing the KV;
  - a request whose placeholders already reach max_new_tokens is not scheduled again
    (it finishes when its ids are filled), so no step computes a token nobody wants.

A request that stops at step N (stop token, stop string) may already be in step N+1:
its N+1 row is simply ignored by fill() (the request is done). The KV that step N+1
writes for it lies above what was inserted into the tree, or is the KV of the real
step-N token, so the cache only ever holds KV of real tokens.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler.batch import ScheduledBatch
from jaxsgl.scheduler.request import Req, ReqStatus

if TYPE_CHECKING:
    from jaxsgl.scheduler.scheduler import Scheduler

PLACEHOLDER = -1  # output id of a token sampled on the device but not read back yet


def gets_placeholder(seq_need_logits: bool, req: Req) -> bool:
    """Whether advance() appends a placeholder for a sequence (max_new_tokens == 0 appends nothing)."""
    return seq_need_logits and req.max_new_tokens > 0


def advance(sched: Scheduler, batch: ScheduledBatch) -> None:
    """Apply a dispatched step before its results are known: kv_len += num_new, append a
    PLACEHOLDER for each sampling sequence, cache computed prefill prefixes (their tokens
    are prompt tokens, or outputs known before the step). Mutates requests, the tree and
    the pool; the batch then waits in sched.in_flight for fill()."""
    if batch is not sched._pending_batch:
        raise RuntimeError(f"advance for step {batch.step}, expected the last scheduled batch")
    sched._pending_batch = None
    for seq in batch.seqs:
        req = seq.req
        if req.status != ReqStatus.RUNNING:
            continue
        req.kv_len += seq.num_new
        if gets_placeholder(seq.need_logits, req):
            req.output_ids.append(PLACEHOLDER)
            req.num_placeholders += 1
        if seq.is_prefill:
            sched.kv.cache_prefix(req)
    sched.in_flight.append(batch)


def fill(sched: Scheduler, batch: ScheduledBatch, next_token_ids: Sequence[int]) -> list[Req]:
    """Replace the oldest in-flight batch's placeholders by the sampled ids (indexed like
    batch.seqs). Requests that ended meanwhile are skipped; retracted (waiting) ones are
    filled too. Returns the live requests of sampling sequences, like process_results()
    (the engine checks their stop conditions)."""
    if not sched.in_flight or batch is not sched.in_flight[0]:
        raise RuntimeError(f"fill for step {batch.step}, expected the oldest advanced batch")
    sched.in_flight.pop(0)
    updated = []
    for i, seq in enumerate(batch.seqs):
        req = seq.req
        if req.is_done or not seq.need_logits:
            continue
        if gets_placeholder(True, req):
            token = int(next_token_ids[i])
            k = len(req.output_ids) - req.num_placeholders
            if token < 0 or req.num_placeholders == 0 or req.output_ids[k] != PLACEHOLDER:
                raise RuntimeError(f"{req}: no placeholder to fill with {token} at step {batch.step}")
            req.output_ids[k] = token
            req.num_placeholders -= 1
        updated.append(req)
    return updated


def trim_placeholders(req: Req) -> None:
    """Drop a request's unfilled output ids (it ended; their steps' results are ignored)."""
    if req.num_placeholders:
        del req.output_ids[len(req.output_ids) - req.num_placeholders:]
        req.num_placeholders = 0


def discard_in_flight(sched: Scheduler) -> None:
    """Forget every advanced-but-unfilled batch (after a failed step; every request in
    them must have ended already, e.g. through abort())."""
    for batch in sched.in_flight:
        live = [s.req for s in batch.seqs if not s.req.is_done]
        if live:
            raise RuntimeError(f"cannot discard step {batch.step}: {live[:3]} still live")
    sched.in_flight.clear()


def will_finish_by_length(req: Req) -> bool:
    """Its placeholders already reach max_new_tokens: the host knows it ends at fill()."""
    return req.num_placeholders > 0 and len(req.output_ids) >= req.max_new_tokens


def placeholder_sources(batch: ScheduledBatch, step: StepInput, prev: ScheduledBatch | None) -> np.ndarray:
    """int32[T]: for each token of `step` (built from `batch`) that is a PLACEHOLDER, the
    row of `prev` (the step in flight before it) that samples it; -1 elsewhere. Only a
    decode's single token can be a placeholder, and it must come from `prev`."""
    src = np.full(step.num_tokens, -1, np.int32)
    where = np.flatnonzero(step.token_ids == PLACEHOLDER)
    if where.size == 0:
        return src
    if prev is None:
        raise RuntimeError(f"step {batch.step} feeds placeholders but no step is in flight")
    rows = {id(s.req): i for i, s in enumerate(prev.seqs)}
    n = len(batch.seqs)
    seq_of = np.searchsorted(step.query_start[1:n + 1], where, side="right")
    for t, s in zip(where.tolist(), seq_of.tolist()):
        seq = batch.seqs[s]
        if t != int(step.query_start[s + 1]) - 1 or id(seq.req) not in rows:
            raise RuntimeError(f"{seq.req}: placeholder at token {t} is not a decode of step {prev.step}")
        src[t] = rows[id(seq.req)]
    return src
