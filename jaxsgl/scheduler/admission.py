"""Admission of waiting requests into a Scheduler's running set (host only; mutates the Scheduler)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxsgl.scheduler.batch import SeqWork
from jaxsgl.scheduler.policy import arrival_order
from jaxsgl.scheduler.request import Req, ReqStatus
from jaxsgl.scheduler.trace import StepTrace

if TYPE_CHECKING:
    from jaxsgl.scheduler.scheduler import Scheduler


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix (block-wise slice compares, then per token); mutates nothing."""
    n, i, block = min(len(a), len(b)), 0, 64
    while i + block <= n and a[i:i + block] == b[i:i + block]:
        i += block
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _headroom_pages(sched: Scheduler, req: Req) -> int:
    """Pages reserved for req's future decode tokens (new_token_ratio estimate); mutates nothing."""
    tokens = min(req.remaining_new_tokens, sched.config.clip_max_new_tokens) * sched.new_token_ratio
    return sched.pool.pages_for(int(tokens))


def _reserved_pages(sched: Scheduler) -> int:
    """Future pages running requests are expected to need (rest of prefill + decode headroom); mutates nothing."""
    return sum(max(sched.pool.pages_for(r.seq_len) - len(r.pages), 0) + _headroom_pages(sched, r)
               for r in sched.running)


def _admission_order(sched: Scheduler) -> tuple[list[Req], set[int]]:
    """Overdue requests (starvation bound) first in arrival order, then the policy's; mutates only the policy."""
    cfg, now = sched.config, sched.clock()
    overdue, rest = [], []
    for req in sched.waiting:
        late = ((cfg.max_wait_steps is not None and sched.step - req.enqueue_step >= cfg.max_wait_steps)
                or (cfg.max_wait_seconds is not None and now - (req.arrival_time or now) >= cfg.max_wait_seconds))
        (overdue if late else rest).append(req)
    overdue.sort(key=arrival_order)
    return overdue + sched.policy.order(rest, sched.cache), {id(r) for r in overdue}


def _held_by_dedup(sched: Scheduler, req: Req, matched: int, prefilling: list[Req]) -> bool:
    """True if req shares enough not-yet-cached prompt with a request being prefilled; mutates nothing."""
    if not (sched.config.enable_prefix_dedup and sched.cache.enabled):
        return False
    threshold = max(sched.config.dedup_min_tokens, sched.page_size)
    ids = req.all_ids
    return any(common_prefix_len(ids, other.all_ids) - matched >= threshold for other in prefilling)


def admit(sched: Scheduler, budget: list[int], trace: StepTrace) -> list[SeqWork]:
    """Admit waiting requests until a budget (requests, tokens, pages) runs out; mutates budget, trace, sched."""
    if not sched.waiting or len(sched.running) >= sched.config.max_running_requests or budget[0] <= 0:
        return []
    order, overdue = _admission_order(sched)
    prefilling = [r for r in sched.running if not r.is_decoding]
    reserved = _reserved_pages(sched)
    seqs: list[SeqWork] = []
    admitted: set[int] = set()
    for req in order:
        if len(sched.running) >= sched.config.max_running_requests or budget[0] <= 0:
            break
        if req.num_retractions and req.enqueue_step == sched.step:
            continue  # retracted for lack of pages in this very step
        match = sched.kv.probe(req)
        if _held_by_dedup(sched, req, match.length, prefilling):
            trace.num_held_dedup += 1
            continue
        sched.kv.attach(req, match)
        need = sched.pool.pages_for(req.seq_len) - len(req.pages) + _headroom_pages(sched, req)
        if need > sched.kv.available_pages() - reserved:
            sched.kv.detach_unused(req)
            break
        n = sched._take_chunk(budget, req.num_pending)
        if n == 0:
            sched.kv.detach_unused(req)
            break
        before = len(req.pages)
        ok = sched.kv.ensure_pages(req, req.kv_len + n)
        assert ok, "pages were counted as available"
        reserved += need - (len(req.pages) - before)
        _mark_admitted(sched, req, match.length, trace, forced=id(req) in overdue)
        sched.cache.touch(match, len(req.cacheable_prefix()))
        admitted.add(id(req))
        prefilling.append(req)
        seqs.append(sched._work(req, n))
    if admitted:
        sched.waiting = [r for r in sched.waiting if id(r) not in admitted]
    return seqs


def _mark_admitted(sched: Scheduler, req: Req, matched: int, trace: StepTrace, *, forced: bool) -> None:
    """Make req running; mutates req (status, admission counts, cached_len), sched.running, sched.stats, trace."""
    req.status = ReqStatus.RUNNING
    req.num_admissions += 1
    if req.first_admit_step is None:
        req.first_admit_step = sched.step
        req.cached_len = min(matched, len(req.prompt_ids))
        sched.stats.prompt_tokens += len(req.prompt_ids)
        sched.stats.cached_prompt_tokens += req.cached_len
    sched.running.append(req)
    trace.num_admitted += 1
    trace.cached_tokens += matched
    trace.num_forced_fair += int(forced)
