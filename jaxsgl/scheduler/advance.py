"""Advance and fill: the one path by which a step's results reach its requests.

Every step, synchronous or overlapped, goes through the same two calls:

    batch = sched.schedule()              # plan step N
    src = placeholder_sources(batch, step_in, prev_batch)   # where N's unknown ids come from
    handle = dispatch(step_in, src)       # device: token_ids[t] = prev_tokens[src[t]] where src[t] >= 0
    sched.advance(batch)                  # kv_len += num_new; a PLACEHOLDER output id per sampled row
    ids = read_back(handle_of_oldest)     # blocks on the oldest step in flight only
    for req in sched.fill(oldest, ids):   # its PLACEHOLDERs get their real ids
        ...                               # the engine decides: stop, stream, jump-forward

The synchronous loop reads step N back right after advancing it; the overlapped loop first
schedules and dispatches N+1 (planned as if N had completed), so the host work of N runs
while N+1 runs on the device.

Invariants (checked by Scheduler.check_integrity):
  - the last req.num_placeholders output ids of a request are PLACEHOLDER, no other is;
  - the radix tree never holds a PLACEHOLDER: ReqKV.cache_prefix inserts at most the
    known tokens, and finish()/abort() trim the placeholders before releasing the KV;
  - a request whose placeholders already reach max_new_tokens is not scheduled again
    (Req.remaining_new_tokens == 0), so no step computes a token nobody wants.

A request that stops at step N may already be in step N+1: its N+1 row is ignored by
fill() (the request is done). The KV that N+1 writes for it lies above what was inserted
into the tree, or is the KV of the real step-N token, so the cache only holds real tokens.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler.batch import ScheduledBatch
from jaxsgl.scheduler.kv import ReqKV
from jaxsgl.scheduler.request import PLACEHOLDER, Req, ReqStatus

__all__ = ["PLACEHOLDER", "advance_requests", "fill_requests", "trim_placeholders", "placeholder_sources"]


def advance_requests(batch: ScheduledBatch, kv: ReqKV) -> None:
    """Apply a dispatched step before its results are known: kv_len += num_new, append a
    PLACEHOLDER for each sampling sequence that wants a token, cache computed prefill
    prefixes (prompt tokens, or outputs known before the step). Mutates the requests,
    the tree and the pool."""
    for seq in batch.seqs:
        req = seq.req
        if req.status != ReqStatus.RUNNING:
            continue
        req.kv_len += seq.num_new
        if seq.need_logits and req.max_new_tokens > 0:
            req.output_ids.append(PLACEHOLDER)
            req.num_placeholders += 1
        if seq.is_prefill:
            kv.cache_prefix(req)


def fill_requests(batch: ScheduledBatch, next_token_ids: Sequence[int]) -> list[Req]:
    """Replace batch's placeholders by the sampled ids (indexed like batch.seqs). Requests
    that ended meanwhile are skipped; retracted (waiting) ones are filled too. A negative id
    drops the request's newest placeholder instead (nothing appended). Returns the live
    requests of sampling sequences: the engine decides their stop conditions."""
    updated = []
    for i, seq in enumerate(batch.seqs):
        req = seq.req
        if req.is_done or not seq.need_logits or seq.discarded:
            continue
        if req.max_new_tokens > 0:
            token = int(next_token_ids[i])
            k = len(req.output_ids) - req.num_placeholders
            if req.num_placeholders == 0 or req.output_ids[k] != PLACEHOLDER:
                raise RuntimeError(f"{req}: no placeholder to fill with {token} at step {batch.step}")
            if token < 0:
                if req.num_placeholders != 1:
                    raise RuntimeError(f"{req}: cannot drop a placeholder with later ones in flight")
                req.output_ids.pop()
            else:
                req.output_ids[k] = token
            req.num_placeholders -= 1
        updated.append(req)
    return updated


def trim_placeholders(req: Req) -> None:
    """Drop a request's unfilled output ids (it ended; their steps' results are ignored)."""
    if req.num_placeholders:
        del req.output_ids[len(req.output_ids) - req.num_placeholders:]
        req.num_placeholders = 0


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
