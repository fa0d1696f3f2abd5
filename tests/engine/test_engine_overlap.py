"""Overlap scheduling (the default; disable_overlap_schedule=False) gives the synchronous engine's results, feature by feature."""
from __future__ import annotations

import numpy as np
import pytest

from jaxsgl.engine.engine import Engine
from tests.engine.workload import CONFIGS, run

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def overlap_engine(tiny_model_dir):
    eng = Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, chunked_prefill_size=64,
                 disable_overlap_schedule=False)
    yield eng
    eng.shutdown()


@pytest.mark.parametrize("name", ["cache-on-page16-chunked", "heavy-eviction"])
def test_greedy_outputs_identical_with_overlap(name, tiny_model_dir, workload, baseline):
    got, stats = run(tiny_model_dir, workload, disable_overlap_schedule=False, **CONFIGS[name])
    assert got == baseline[0]  # the synchronous engine's outputs (equal across configs: test_engine_equivalence)
    if name == "heavy-eviction":
        assert stats["evicted_pages"] > 0


def test_overlap_runs_decodes_from_device_tokens_without_fallback(overlap_engine):
    before = len(overlap_engine.trace())
    out = overlap_engine.generate(PROMPT, {"max_new_tokens": 12, **GREEDY})
    steps = overlap_engine.trace()[before:]
    assert out["meta_info"]["completion_tokens"] == 12
    assert len([t for t in steps if t["num_seqs"]]) == 12  # 1 prefill + 11 decodes: no step for the 13th token
    assert not any(t["sync_fallback"] for t in steps)
    assert overlap_engine.loop.inflight is None and not overlap_engine.scheduler.in_flight
    for t in steps:  # where each step's host time went (benchmarks/offline_throughput.py sums these)
        phases = [t[k] for k in ("prepare_time", "dispatch_time", "wait_time", "process_time")]
        assert all(isinstance(x, float) and x >= 0 for x in phases)
        assert t["wait_time"] <= t["step_time"]  # waited within dispatch -> results on the host


def test_stop_strings_stop_ids_and_streaming_match_sync(overlap_engine, tiny_engine):
    full = tiny_engine.generate(PROMPT, {"max_new_tokens": 24, **GREEDY})
    assert overlap_engine.generate(PROMPT, {"max_new_tokens": 24, **GREEDY})["output_ids"] == full["output_ids"]
    text = full["text"]
    stop = text[len(text) // 2: len(text) // 2 + 3]
    want = tiny_engine.generate(PROMPT, {"max_new_tokens": 24, "stop": [stop], **GREEDY})
    got = overlap_engine.generate(PROMPT, {"max_new_tokens": 24, "stop": [stop], **GREEDY})
    assert (got["text"], got["output_ids"], got["meta_info"]["finish_reason"]) == \
        (want["text"], want["output_ids"], want["meta_info"]["finish_reason"])
    chunks = list(overlap_engine.generate(PROMPT, {"max_new_tokens": 24, "stop": stop, **GREEDY}, stream=True))
    assert "".join(c["text"] for c in chunks) == want["text"]
    assert all(-1 not in c["output_ids"] for c in chunks)
    target = full["output_ids"][5]
    got = overlap_engine.generate(PROMPT, {"max_new_tokens": 24, "stop_token_ids": [target], **GREEDY})
    assert got["output_ids"] == full["output_ids"][:full["output_ids"].index(target) + 1]
    overlap_engine.scheduler.check_integrity()


def test_logprobs_zero_tokens_n_and_penalties_match_sync(overlap_engine, tiny_engine):
    kw = dict(input_ids=tiny_engine.tokenizer.encode(PROMPT), return_logprob=True, logprob_start_len=3,
              top_logprobs_num=3, sampling_params={"max_new_tokens": 4, **GREEDY})
    want, got = tiny_engine.generate(**kw)["meta_info"], overlap_engine.generate(**kw)["meta_info"]
    for key in ("input_token_logprobs", "output_token_logprobs"):
        assert [t for _, t, _ in got[key]] == [t for _, t, _ in want[key]]
        np.testing.assert_allclose([x for x, _, _ in got[key]], [x for x, _, _ in want[key]], atol=1e-5)
    assert [[t for _, t, _ in top] for top in got["output_top_logprobs"]] == \
        [[t for _, t, _ in top] for top in want["output_top_logprobs"]]
    zero = overlap_engine.generate("Astronomy and stars, once more. " * 3, {"max_new_tokens": 0})
    assert zero["output_ids"] == [] and zero["meta_info"]["finish_reason"]["type"] == "length"
    sp = {"max_new_tokens": 10, "temperature": 1.0, "top_p": 0.95, "seed": 7, "n": 3, "ignore_eos": True}
    assert [o["output_ids"] for o in overlap_engine.generate([PROMPT + " n"], sp)] == \
        [o["output_ids"] for o in tiny_engine.generate([PROMPT + " n"], sp)]
    before = len(overlap_engine.trace())
    pen = {"max_new_tokens": 8, "repetition_penalty": 1.3, "frequency_penalty": 0.5, **GREEDY}
    assert overlap_engine.generate(PROMPT, pen)["output_ids"] == tiny_engine.generate(PROMPT, pen)["output_ids"]
    assert sum(t["sync_fallback"] for t in overlap_engine.trace()[before:]) >= 6  # every decode waits


def test_abort_stream_and_failed_step_with_overlap(overlap_engine, monkeypatch):
    it = overlap_engine.generate(PROMPT, {"max_new_tokens": 200, **GREEDY}, stream=True)
    first = next(it)
    overlap_engine.abort(first["meta_info"]["id"])
    rest = list(it)
    assert rest[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert -1 not in rest[-1]["output_ids"]
    it2 = overlap_engine.generate(PROMPT, {"max_new_tokens": 200, **GREEDY}, stream=True)
    next(it2)
    it2.close()
    assert overlap_engine.generate(PROMPT, {"max_new_tokens": 3, **GREEDY})["meta_info"]["completion_tokens"] == 3
    real, calls = overlap_engine.runner.collect, {"n": 0}

    def flaky(handle):
        calls["n"] += 1
        if calls["n"] == 3:  # a device error surfacing while the next step is already in flight
            raise RuntimeError("simulated device error")
        return real(handle)

    monkeypatch.setattr(overlap_engine.runner, "collect", flaky)
    with pytest.raises(RuntimeError, match="simulated device error"):
        overlap_engine.generate(PROMPT, {"max_new_tokens": 8, **GREEDY})
    monkeypatch.setattr(overlap_engine.runner, "collect", real)
    assert overlap_engine.generate(PROMPT, {"max_new_tokens": 5, **GREEDY})["meta_info"]["completion_tokens"] == 5
    overlap_engine.scheduler.check_integrity()
    assert not overlap_engine.scheduler.in_flight
