"""StepInputBuilder: bucketed padding of ScheduledBatches into StepInputs."""
import numpy as np
import pytest

from jaxsgl.model.step_input import PAD_SLOT
from jaxsgl.scheduler import Req, Scheduler, StepInputBuilder, pow2_buckets
from jaxsgl.model.step_input import PAD_PAGE
from jaxsgl.scheduler.batch import capped_token_buckets


def test_pow2_buckets():
    assert pow2_buckets(100, 16) == [16, 32, 64, 128]
    assert pow2_buckets(1) == [1]


def test_the_last_token_bucket_is_capped_at_the_step_limit():
    # a full mixed step (2,048 prefill tokens + 256 decode tokens) pads to 2,304, not 4,096
    assert capped_token_buckets(2048 + 256, 16)[-2:] == [2048, 2304]
    assert capped_token_buckets(512 + 64, 16)[-2:] == [512, 640]  # rounded up to 128
    assert capped_token_buckets(2048, 16)[-1] == 2048 and capped_token_buckets(1) == [1]
    assert capped_token_buckets(100, 16) == [16, 32, 64, 128]  # the cap would not be smaller
    builder = StepInputBuilder.for_limits(16, max_tokens=2048 + 256, max_seqs=256, max_context_len=4096)
    assert builder.token_buckets[-1] == 2304


def test_build_pads_to_smallest_bucket():
    sched = Scheduler.create(64, 4)
    sched.add_request(Req("a", list(range(10)), max_new_tokens=3))
    sched.add_request(Req("b", list(range(100, 103)), max_new_tokens=3))
    builder = StepInputBuilder(4, token_buckets=[8, 16, 32], seq_buckets=[1, 4], page_buckets=[2, 8])
    batch = sched.schedule()
    inp = builder.build(batch)
    inp.check()
    assert (inp.num_tokens, inp.num_seqs, inp.page_table.shape[1]) == (16, 4, 8)
    assert builder.padded_shape(batch) == (16, 4, 8)
    assert list(inp.query_start) == [0, 10, 13, 13, 13] and list(inp.kv_lens) == [10, 3, 0, 0]
    assert (inp.slots[13:] == PAD_SLOT).all()
    pages_a = batch.seqs[0].pages
    assert inp.slots[9] == pages_a[2] * 4 + 1  # token 9 of "a": page 2, offset 1
    assert list(inp.logits_indices[:2]) == [9, 12]
    sched.process_results(batch, [1, 2])
    inp = builder.build(sched.schedule())  # decode: 2 tokens, positions 10 and 3
    assert inp.num_tokens == 8 and list(inp.positions[:2]) == [10, 3]


def test_too_large_batch_raises_and_shapes_are_bounded():
    builder = StepInputBuilder.for_limits(16, max_tokens=4096 + 256, max_seqs=256, max_context_len=8192)
    shapes = builder.shapes()
    assert len(shapes) < 100 and len(set(shapes)) == len(shapes)
    assert all(s <= t or s == min(b for b in builder.seq_buckets if b >= t) for t, s, _ in shapes)
    sched = Scheduler.create(64, 1)
    sched.add_request(Req("a", list(range(40)), max_new_tokens=1))
    small = StepInputBuilder(1, token_buckets=[16], seq_buckets=[1], page_buckets=[64])
    with pytest.raises(ValueError, match="largest bucket"):
        small.build(sched.schedule())


@pytest.mark.parametrize("page_size", [1, 4])
def test_vectorized_build_matches_make_step_input_and_limits(page_size):
    sched = Scheduler.create(512, page_size, max_prefill_tokens=64, chunked_prefill_size=64, max_running_requests=8)
    builder = StepInputBuilder.for_limits(page_size, max_tokens=64 + 8, max_seqs=8, max_context_len=512 * page_size)
    rng = np.random.default_rng(0)
    for i in range(30):
        sched.add_request(Req(f"r{i}", rng.integers(0, 50, rng.integers(1, 200)).tolist(), max_new_tokens=3))
    narrow = StepInputBuilder.for_limits(page_size, max_tokens=64 + 8, max_seqs=8, max_context_len=512 * page_size)
    narrow.narrow_page_tables = True
    while sched.has_work():
        batch = sched.schedule()
        fast, ref = builder.build(batch), builder.build_reference(batch)
        fast.check()
        thin = narrow.build(batch)  # the same, with only the page-table columns in use
        w = thin.page_table.shape[1]
        need = max(-(-x.kv_len // page_size) for x in batch.seqs)
        assert w == min(v for v in narrow.narrow_widths(ref.page_table.shape[1]) if v >= need)
        np.testing.assert_array_equal(thin.page_table, ref.page_table[:, :w])
        assert (ref.page_table[:, w:] == PAD_PAGE).all()
        np.testing.assert_array_equal(thin.slots, ref.slots)
        assert builder.padded_shape(batch) in builder.shapes()
        n_new = [s.num_new for s in batch.seqs]
        if max(n_new) == 1:
            assert builder.padded_shape(batch) in builder.shapes_for(1, 1)
        if min(n_new) >= 16:
            assert builder.padded_shape(batch) in builder.shapes_for(16)
        for name in ("token_ids", "positions", "query_start", "kv_lens", "page_table", "slots", "logits_indices"):
            np.testing.assert_array_equal(getattr(fast, name), getattr(ref, name), err_msg=name)
            assert getattr(fast, name).dtype == np.int32
        for req in sched.process_results(batch, [1] * len(batch)):
            if len(req.output_ids) >= req.max_new_tokens:
                sched.finish(req)
