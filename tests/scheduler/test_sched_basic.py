"""Scheduler behaviour on small hand-made cases."""
import numpy as np
import pytest

from jaxsgl.scheduler import Req, ReqStatus, Scheduler
from sched_harness import assert_idle_and_clean, make_builder, run


def step(sched, model_out=None):
    batch = sched.schedule()
    ids = model_out if model_out is not None else [7] * len(batch)
    return batch, sched.process_results(batch, ids)


def test_prefill_then_decode_then_finish():
    sched = Scheduler.create(32, 1)
    req = sched.add_request(Req("a", [1, 2, 3], max_new_tokens=2))
    batch, updated = step(sched)
    (seq,) = batch.seqs
    assert seq.new_token_ids == [1, 2, 3] and seq.cached_len == 0 and seq.need_logits and seq.is_prefill
    assert updated == [req] and req.output_ids == [7] and req.kv_len == 3
    batch, _ = step(sched)
    assert batch.seqs[0].new_token_ids == [7] and batch.seqs[0].cached_len == 3 and not batch.seqs[0].is_prefill
    sched.finish(req, "length")
    assert req.status == ReqStatus.FINISHED and req.finish_reason == "length"
    # prompt + the first output (which has KV) are now cached
    assert sched.cache.prefix_len([1, 2, 3, 7, 7]) == 4
    assert_idle_and_clean(sched)


def test_second_request_reuses_cached_prefix():
    sched = Scheduler.create(64, 1)
    a = sched.add_request(Req("a", list(range(10)), max_new_tokens=1))
    step(sched)
    sched.finish(a)
    b = sched.add_request(Req("b", list(range(10)) + [50, 51], max_new_tokens=1))
    batch, _ = step(sched)
    assert b.cached_len == 10 and batch.seqs[0].cached_len == 10 and batch.seqs[0].new_token_ids == [50, 51]
    assert batch.trace.cached_tokens == 10
    sched.finish(b)
    assert_idle_and_clean(sched)


def test_identical_prompt_recomputes_only_last_token():
    sched = Scheduler.create(64, 1)
    for rid in ("a", "b"):
        r = sched.add_request(Req(rid, [1, 2, 3, 4], max_new_tokens=1))
        batch, _ = step(sched)
        sched.finish(r)
    assert batch.seqs[0].new_token_ids == [4] and batch.seqs[0].cached_len == 3


def test_chunked_prefill_splits_long_prompt():
    sched = Scheduler.create(128, 4, chunked_prefill_size=16, max_prefill_tokens=64)
    req = sched.add_request(Req("a", list(range(40)), max_new_tokens=1))
    sizes, logits = [], []
    while not req.output_ids:
        batch, _ = step(sched)
        sizes.append(batch.seqs[0].num_new)
        logits.append(batch.seqs[0].need_logits)
        sched.check_integrity()
    assert sizes == [16, 16, 8] and logits == [False, False, True]
    # each finished chunk went into the cache and is locked by the request
    assert sched.cache.locked_pages == 10 and req.num_tree_pages == 10


def test_no_chunking_runs_long_prompt_whole_and_alone():
    sched = Scheduler.create(256, 1, chunked_prefill_size=None, max_prefill_tokens=16)
    sched.add_request(Req("long", list(range(40)), max_new_tokens=1))
    sched.add_request(Req("short", [900, 901], max_new_tokens=1))
    batch, _ = step(sched)
    assert [s.num_new for s in batch.seqs] == [40]
    batch, _ = step(sched)
    assert [s.req.rid for s in batch.seqs] == ["long", "short"]  # decode + the next prefill


def test_admission_respects_max_running_and_token_budget():
    sched = Scheduler.create(256, 1, max_running_requests=3, max_prefill_tokens=25, chunked_prefill_size=25)
    for i in range(6):
        sched.add_request(Req(f"r{i}", [100 * i + j for j in range(10)], max_new_tokens=4))
    batch, _ = step(sched)
    assert [s.num_new for s in batch.seqs] == [10, 10, 5]  # budget 25: the third is chunked
    batch, _ = step(sched)
    assert len(sched.running) == 3 and sorted(s.num_new for s in batch.seqs) == [1, 1, 5]


def test_in_batch_prefix_dedup_holds_sharers_until_cached():
    sched = Scheduler.create(256, 1, dedup_min_tokens=8)
    shared = list(range(64))
    a = sched.add_request(Req("a", shared + [1000], max_new_tokens=1))
    b = sched.add_request(Req("b", shared + [2000], max_new_tokens=1))
    c = sched.add_request(Req("c", [5, 5, 5], max_new_tokens=1))
    batch, _ = step(sched)
    assert [s.req.rid for s in batch.seqs] == ["a", "c"] and batch.trace.num_held_dedup == 1
    batch, _ = step(sched)
    assert b.cached_len == 64 and [s.new_token_ids for s in batch.seqs if s.req is b] == [[2000]]


def test_dedup_off_prefills_twice():
    sched = Scheduler.create(256, 1, enable_prefix_dedup=False)
    shared = list(range(64))
    sched.add_request(Req("a", shared + [1000], max_new_tokens=1))
    sched.add_request(Req("b", shared + [2000], max_new_tokens=1))
    batch, _ = step(sched)
    assert batch.trace.prefill_tokens == 130


def test_disabled_cache_frees_everything():
    sched = Scheduler.create(64, 1, disable_radix_cache=True)
    for rid in ("a", "b"):
        r = sched.add_request(Req(rid, [1, 2, 3, 4], max_new_tokens=1))
        batch, _ = step(sched)
        assert batch.seqs[0].cached_len == 0
        sched.finish(r)
        assert sched.pool.num_free == sched.pool.capacity
    assert sched.stats.hit_rate == 0.0


def test_abort_waiting_running_and_in_flight():
    sched = Scheduler.create(64, 1, max_running_requests=2)
    for rid in "abc":
        sched.add_request(Req(rid, [ord(rid)] * 5, max_new_tokens=8))
    step(sched)
    assert sched.abort("c").status == ReqStatus.ABORTED   # waiting
    sched.abort("a")                                        # running
    sched.check_integrity()
    batch = sched.schedule()
    sched.abort("b")                                        # in flight
    assert sched.process_results(batch, [1] * len(batch)) == []
    assert sched.abort("nobody") is None
    assert sched.stats.num_aborted == 3
    assert_idle_and_clean(sched)


def test_finished_flags_and_negative_token():
    sched = Scheduler.create(64, 1)
    a = sched.add_request(Req("a", [1, 2], max_new_tokens=0))
    b = sched.add_request(Req("b", [3, 4], max_new_tokens=5))
    batch = sched.schedule()
    updated = sched.process_results(batch, [-1, 9], finished=[True, False])
    assert a.output_ids == [] and a.status == ReqStatus.FINISHED and b.output_ids == [9]
    assert updated == [a, b]
    assert sched.cache.prefix_len([1, 2]) == 2  # max_new_tokens=0 cached the prompt


def test_non_mixed_batches_put_prefill_first():
    sched = Scheduler.create(64, 1, mixed_batches=False)
    sched.add_request(Req("a", [1, 2, 3], max_new_tokens=4))
    step(sched)
    sched.add_request(Req("b", [4, 5, 6], max_new_tokens=4))
    batch, _ = step(sched)
    assert [s.req.rid for s in batch.seqs] == ["b"]
    batch, _ = step(sched)
    assert sorted(s.req.rid for s in batch.seqs) == ["a", "b"] and not any(s.is_prefill for s in batch.seqs)


def test_add_request_validation():
    sched = Scheduler.create(8, 4, max_context_len=64)
    sched.add_request(Req("ok", [1] * 10, max_new_tokens=10))
    with pytest.raises(ValueError, match="duplicate"):
        sched.add_request(Req("ok", [1], max_new_tokens=1))
    with pytest.raises(ValueError, match="context length 64"):
        sched.add_request(Req("long", [1] * 60, max_new_tokens=10))
    sched2 = Scheduler.create(4, 4)
    with pytest.raises(ValueError, match="KV pool"):
        sched2.add_request(Req("big", [1] * 16, max_new_tokens=1))
    with pytest.raises(ValueError, match="empty prompt"):
        sched2.add_request(Req("empty", [], max_new_tokens=1))


def test_retraction_when_decode_runs_out_of_pages():
    # 24 one-token pages; 3 requests of 6 prompt tokens that each want 8 more tokens.
    sched = Scheduler.create(24, 1, init_new_token_ratio=0.0, min_new_token_ratio=0.0, dedup_min_tokens=64)
    for i in range(3):
        sched.add_request(Req(f"r{i}", [10 * i + j for j in range(6)], max_new_tokens=8))
    outputs = run(sched)
    assert sched.stats.num_retractions >= 1 and len(outputs) == 3
    assert sum(t.num_retracted for t in sched.trace) == sched.stats.num_retractions
    assert_idle_and_clean(sched)


def test_trace_records_are_flat_dicts():
    sched = Scheduler.create(64, 1)
    sched.add_request(Req("a", [1, 2, 3], max_new_tokens=3))
    run(sched)
    records = sched.trace_records()
    assert len(records) == 3 and records[0]["new_tokens"] == 3 and records[1]["num_decode_seqs"] == 1
    assert all(isinstance(v, (int, float, type(None))) for r in records for v in r.values())


def test_process_results_requires_the_pending_batch():
    sched = Scheduler.create(64, 1)
    sched.add_request(Req("a", [1, 2, 3], max_new_tokens=3))
    batch = sched.schedule()
    with pytest.raises(RuntimeError):
        sched.schedule()
    sched.process_results(batch, np.array([1], np.int32))
    with pytest.raises(RuntimeError):
        sched.process_results(batch, [1])


def test_logprob_start_len_limits_cache_reuse():
    sched = Scheduler.create(64, 1)
    a = sched.add_request(Req("a", list(range(10)), max_new_tokens=1))
    step(sched)
    sched.finish(a)
    b = sched.add_request(Req("b", list(range(10)), max_new_tokens=1, logprob_start_len=4))
    batch, _ = step(sched)
    assert batch.seqs[0].cached_len == 4 and batch.seqs[0].new_token_ids == list(range(4, 10))


def test_jump_forward_feeds_forced_tokens_as_one_extend():
    sched = Scheduler.create(64, 1)
    req = sched.add_request(Req("a", [1, 2, 3], max_new_tokens=10))
    step(sched)
    sched.jump_forward(req, 0, [40, 41, 42])
    batch, _ = step(sched)
    assert batch.seqs[0].new_token_ids == [7, 40, 41, 42] and batch.seqs[0].need_logits
    assert req.output_ids == [7, 40, 41, 42, 7] and req.kv_len == 7
    sched.jump_forward(req, 1, [50, 51])  # the last sampled token merges with the forced string
    assert req.output_ids == [7, 40, 41, 42, 50, 51] and req.kv_len == 7
    batch, _ = step(sched)
    assert batch.seqs[0].new_token_ids == [50, 51]
    sched.check_integrity()
    sched.finish(req)
    with pytest.raises(ValueError):
        sched.jump_forward(req, 0, [1])


def test_jump_forward_rolls_back_a_step_in_flight():
    sched = Scheduler.create(64, 4, chunked_prefill_size=64)
    req = sched.add_request(Req("a", list(range(1, 10)), max_new_tokens=10))
    b1 = sched.schedule()
    sched.advance(b1)
    b2 = sched.schedule()  # decodes the placeholder of b1
    sched.advance(b2)
    assert req.num_placeholders == 2 and req.kv_len == 10
    sched.fill(b1, [7])
    sched.jump_forward(req, 1, [30, 31, 32])  # 7 merges: its in-flight KV is dropped
    assert req.output_ids == [30, 31, 32] and req.kv_len == 9 and req.num_placeholders == 0
    assert sched.fill(b2, [99]) == []  # the rolled-back row is ignored
    b3 = sched.schedule()
    assert b3.seqs[0].new_token_ids == [30, 31, 32] and b3.seqs[0].cached_len == 9
    sched.process_results(b3, [5])
    assert req.output_ids == [30, 31, 32, 5]
    sched.check_integrity()


def test_trace_records_can_be_read_while_the_loop_appends():
    """The engine's loop thread appends a StepTrace per step while a client thread (a benchmark, the
    server's /metrics) reads the trace: reading must not raise 'deque mutated during iteration'."""
    import sys
    import threading

    from jaxsgl.scheduler.trace import StepTrace
    sched = Scheduler.create(64, 1, trace_capacity=1000)  # a full ring: every append also drops one
    for i in range(1000):
        sched.trace.append(StepTrace(step=i))
    stop, interval = threading.Event(), sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as CPython allows: the race shows in a few reads

    def loop() -> None:
        i = 1000
        while not stop.is_set():
            sched.trace.append(StepTrace(step=i))
            i += 1

    writer = threading.Thread(target=loop, daemon=True)
    writer.start()
    try:
        for _ in range(20):
            steps = [r["step"] for r in sched.trace_records()]
            assert len(steps) == 1000 and steps == list(range(steps[0], steps[0] + len(steps)))
    finally:
        stop.set()
        writer.join(5)
        sys.setswitchinterval(interval)


def test_trace_records_from_a_step_on():
    sched = Scheduler.create(64, 1)
    sched.add_request(Req("a", [1, 2, 3], max_new_tokens=4))
    run(sched)
    steps = [r["step"] for r in sched.trace_records()]
    assert len(steps) == 4 and steps == sorted(steps)
    assert [r["step"] for r in sched.trace_records(steps[2])] == steps[2:]
    assert sched.trace_records(steps[-1] + 1) == []
