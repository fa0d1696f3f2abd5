"""Overlap scheduling on the host: advance / fill / trim with one step in flight (MockModel)."""
from __future__ import annotations

import numpy as np
import pytest

from jaxsgl.scheduler import Req, Scheduler
from jaxsgl.scheduler.mock_model import MockModel
from jaxsgl.scheduler.advance import PLACEHOLDER, placeholder_sources
from tests.scheduler.sched_harness import assert_idle_and_clean, make_builder


def stops(req: Req) -> bool:
    """A stop rule that depends on the tokens only (so both loops stop at the same place)."""
    n = req.num_generated
    return n >= req.max_new_tokens or (n > 0 and req.output_ids[n - 1] % 29 == 0)


def drive(sched: Scheduler, reqs: list[Req], *, overlap: bool, abort_every: int = 0, ctx: int = 1024,
          ) -> dict[str, list[int]]:
    """Run to idle, checking integrity after every step; overlap keeps one step in flight."""
    model = MockModel(sched.pool.num_pages, sched.page_size)
    builder = make_builder(sched, ctx)
    for r in reqs:
        sched.add_request(r)
    outputs: dict[str, list[int]] = {}
    prev = None  # (batch, sampled ids) of the step in flight
    steps = 0

    def deliver(batch, ids, updated):
        for req in updated:
            if req.max_new_tokens == 0 or stops(req):
                sched.finish(req, "stop")
                outputs[req.rid] = list(req.output_ids)

    while sched.has_work() or prev is not None:
        steps += 1
        assert steps < 20_000, "no progress"
        if abort_every and steps % abort_every == 0 and sched.running:
            victim = sched.running[steps % len(sched.running)]
            sched.abort(victim.rid)
            assert PLACEHOLDER not in victim.output_ids
            outputs[victim.rid] = ["aborted"]
        batch = sched.schedule()
        cur = None
        if batch:
            inp = builder.build(batch)
            if overlap:
                src = placeholder_sources(batch, inp, prev[0] if prev else None)
                ids = model.step(inp, batch, prev[1] if prev else None, src)
                sched.advance(batch)
                cur = (batch, ids)
            else:
                ids = model.step(inp, batch)
                ids[[i for i, s in enumerate(batch.seqs) if s.req.max_new_tokens == 0]] = -1  # as the engine does
                deliver(batch, ids, sched.process_results(batch, ids))
        else:
            assert prev is not None, f"empty batch with work left: {sched.waiting[:3]} {sched.running[:3]}"
            sched.cancel_pending()
        if prev is not None:
            deliver(prev[0], prev[1], sched.fill(*prev))
        sched.check_integrity()
        prev = cur
    return outputs


def workload(seed: int, n: int = 120) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    system = rng.integers(0, 1000, 48).tolist()
    work = []
    for i in range(n):
        prompt = (system if i % 2 else []) + rng.integers(0, 1000, int(rng.integers(1, 60))).tolist()
        work.append((prompt, int(rng.integers(0, 48)) if i % 10 else 0))
    return work


@pytest.mark.parametrize("page_size,num_pages,chunk,aborts", [(16, 400, 64, 0), (1, 700, 32, 0), (4, 60, 64, 0),
                                                            (4, 60, 64, 7)])
def test_overlap_matches_sync_with_integrity_every_step(page_size, num_pages, chunk, aborts):
    work = workload(page_size + num_pages)
    ratio = 0.05 if num_pages == 60 else 0.7  # small pool + optimistic admission: retractions
    mk = lambda: Scheduler.create(num_pages, page_size, chunked_prefill_size=chunk, max_running_requests=16,
                                  max_prefill_tokens=chunk, init_new_token_ratio=ratio, min_new_token_ratio=0.05)
    reqs = lambda: [Req(f"q{i}", p, max_new_tokens=m) for i, (p, m) in enumerate(work)]
    s_sync, s_ovl = mk(), mk()
    want = drive(s_sync, reqs(), overlap=False, abort_every=aborts)
    got = drive(s_ovl, reqs(), overlap=True, abort_every=aborts)
    if aborts:  # abort timing differs between the loops: compare the requests neither aborted
        keep = [r for r in want if want[r] != ["aborted"] and got.get(r) != ["aborted"]]
        assert len(keep) > len(work) // 2
        want, got = {r: want[r] for r in keep}, {r: got[r] for r in keep}
    assert got == want
    if num_pages == 60:
        assert sum(t["num_retracted"] for t in s_ovl.trace_records()) > 0
    for s in (s_sync, s_ovl):
        assert not s.in_flight
        assert_idle_and_clean(s)


def test_advance_fill_trim_by_hand():
    sched = Scheduler.create(32, 4, chunked_prefill_size=64)
    model = MockModel(32, 4)
    builder = make_builder(sched, 256)
    a = sched.add_request(Req("a", list(range(10, 19)), max_new_tokens=3))
    b = sched.add_request(Req("b", list(range(50, 57)), max_new_tokens=1))
    b1 = sched.schedule()
    out1 = model.step(builder.build(b1), b1)
    sched.advance(b1)
    assert a.output_ids == [PLACEHOLDER] and a.num_placeholders == 1 and a.kv_len == 9 and a.num_generated == 0
    sched.check_integrity()
    b2 = sched.schedule()  # b will end by length once filled: only a decodes
    assert [s.req.rid for s in b2.seqs] == ["a"] and b2.seqs[0].new_token_ids == [PLACEHOLDER]
    inp2 = builder.build(b2)
    src = placeholder_sources(b2, inp2, b1)
    assert src[0] == 0 and (src[1:] == -1).all()
    out2 = model.step(inp2, b2, out1, src)
    sched.advance(b2)
    assert a.num_placeholders == 2 and a.kv_len == 10
    updated = sched.fill(b1, out1)
    assert updated == [a, b] and a.output_ids == [int(out1[0]), PLACEHOLDER] and b.output_ids == [int(out1[1])]
    sched.finish(b)
    sched.finish(a)  # stops at step 1 although step 2 is in flight: its placeholder is trimmed
    assert a.output_ids == [int(out1[0])] and a.num_placeholders == 0
    sched.check_integrity()
    assert sched.fill(b2, out2) == []  # the ended request's row is ignored
    assert sched.cache.prefix_len(a.prompt_ids + a.output_ids) == 8  # only real tokens, whole pages
    assert_idle_and_clean(sched)


def test_abort_with_two_placeholders_inserts_only_known_tokens():
    sched = Scheduler.create(32, 2, chunked_prefill_size=64)
    model = MockModel(32, 2)
    builder = make_builder(sched, 256)
    a = sched.add_request(Req("a", list(range(10, 16)), max_new_tokens=8))
    b1 = sched.schedule()
    out1 = model.step(builder.build(b1), b1)
    sched.advance(b1)
    b2 = sched.schedule()
    inp2 = builder.build(b2)
    model.step(inp2, b2, out1, placeholder_sources(b2, inp2, b1))
    sched.advance(b2)
    assert a.output_ids == [PLACEHOLDER, PLACEHOLDER] and a.kv_len == 7
    sched.abort("a")
    assert a.output_ids == [] and a.kv_len == 0
    sched.check_integrity()
    with pytest.raises(RuntimeError):
        sched.fill(b2, out1)  # out of order
    sched.discard_in_flight()
    assert sched.cache.prefix_len(list(range(10, 16)) + [0, 0]) == 6
    assert_idle_and_clean(sched)
