"""Engine features on a tiny random model with a real tokenizer: stops, n, seeds, logprobs, errors, aborts."""
from __future__ import annotations

import threading

import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.model.forward import init_kv_cache, make_forward, step_to_device
from jaxsgl.model.loader import load_model
from jaxsgl.model.step_input import make_step_input

PROMPT = "The quick brown fox jumps over the lazy dog. " * 4


def greedy(eng, prompt=PROMPT, n=24, **kw):
    return eng.generate(prompt, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, **kw})


def test_stop_string_trims_and_never_leaks_while_streaming(tiny_engine):
    full = greedy(tiny_engine)["text"]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip(), f"pick a visible stop string from {full!r}"
    out = greedy(tiny_engine, stop=[stop])
    assert out["text"] == full[:full.find(stop)]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    chunks = list(tiny_engine.generate(PROMPT, {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True,
                                                "stop": stop}, stream=True))
    assert "".join(c["text"] for c in chunks) == out["text"]
    assert chunks[-1]["meta_info"]["finish_reason"]["matched"] == stop


def test_streamed_increments_concatenate_to_the_whole_text(tiny_engine):
    chunks = list(tiny_engine.generate(PROMPT, {"max_new_tokens": 16, "temperature": 0, "ignore_eos": True},
                                       stream=True))
    assert len(chunks) > 1 and "".join(c["text"] for c in chunks) == greedy(tiny_engine, n=16)["text"]


def test_stop_token_ids(tiny_engine):
    ids = greedy(tiny_engine)["output_ids"]
    target = ids[5]
    out = greedy(tiny_engine, stop_token_ids=[target])
    assert out["output_ids"] == ids[:ids.index(target) + 1]
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": target}


def test_seeds_n_and_shared_prompt_kv(tiny_engine):
    sp = {"max_new_tokens": 12, "temperature": 1.0, "top_p": 0.95, "seed": 42, "ignore_eos": True}
    a = tiny_engine.generate(PROMPT, sp)
    b = tiny_engine.generate(PROMPT, sp)
    assert a["output_ids"] == b["output_ids"]
    many = tiny_engine.generate([PROMPT + " Again."], {**sp, "n": 4})
    assert len(many) == 4 and len({tuple(m["output_ids"]) for m in many}) > 1
    prompt_len = many[0]["meta_info"]["prompt_tokens"]
    assert sum(m["meta_info"]["cached_tokens"] for m in many) >= 3 * (prompt_len // 16) * 16


def test_max_new_tokens_zero_caches_the_prefix(tiny_engine):
    prefix = "A completely different system prompt about astronomy and stars. " * 3
    first = tiny_engine.generate(prefix, {"max_new_tokens": 0})
    assert first["output_ids"] == [] and first["meta_info"]["finish_reason"]["type"] == "length"
    n = first["meta_info"]["prompt_tokens"]
    again = greedy(tiny_engine, prefix + " Question?", n=2)
    assert again["meta_info"]["cached_tokens"] >= (n // 16) * 16 > 0


def test_logprobs_match_a_direct_forward(tiny_engine, tiny_model_dir):
    ids = tiny_engine.tokenizer.encode(PROMPT)
    out = tiny_engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 4, "temperature": 0,
                                                               "ignore_eos": True},
                               return_logprob=True, logprob_start_len=3, top_logprobs_num=3)
    cfg, w, _ = load_model(tiny_model_dir, dtype="float32")
    full = ids + out["output_ids"]
    kv = init_kv_cache(cfg, 8, 16, jnp.float32)
    step = make_step_input([(full, 0, list(range(1, 8)))], 16)
    logits, _ = make_forward(cfg, all_logits=True)(w, kv, step_to_device(step))
    lp = np.asarray(logits) - np.log(np.exp(np.asarray(logits, np.float64)).sum(-1, keepdims=True))
    meta = out["meta_info"]
    inp = meta["input_token_logprobs"]
    assert [t for _, t, _ in inp] == ids[3:]
    np.testing.assert_allclose([x for x, _, _ in inp], [lp[p - 1, ids[p]] for p in range(3, len(ids))], atol=1e-4)
    outl = meta["output_token_logprobs"]
    np.testing.assert_allclose([x for x, _, _ in outl],
                               [lp[len(ids) - 1 + i, t] for i, t in enumerate(out["output_ids"])], atol=1e-4)
    for i, top in enumerate(meta["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == out["output_ids"][i]  # greedy: the top token is the chosen one
        assert top[0][0] >= top[1][0] >= top[2][0]


def test_bad_requests_raise_and_lose_nothing(tiny_engine):
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("ok", greedy(tiny_engine, n=20)))
    t.start()
    with pytest.raises(ValueError, match="context length"):
        tiny_engine.generate("x " * 3000, {"max_new_tokens": 4})
    with pytest.raises(ValueError, match="unknown sampling params"):
        tiny_engine.generate("hi", {"max_tokens": 4})
    with pytest.raises(ValueError, match="top_p"):
        tiny_engine.generate(["ok", "bad"], [{"max_new_tokens": 2}, {"top_p": 0}])
    t.join(timeout=300)
    assert results["ok"]["text"] == greedy(tiny_engine, n=20)["text"]


def test_abort_and_abandoned_stream(tiny_engine):
    it = tiny_engine.generate(PROMPT, {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True}, stream=True)
    first = next(it)
    tiny_engine.abort(first["meta_info"]["id"])
    rest = list(it)
    assert rest[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    it2 = tiny_engine.generate(PROMPT, {"max_new_tokens": 200, "temperature": 0, "ignore_eos": True}, stream=True)
    next(it2)
    it2.close()  # the client went away: its request is aborted, the engine keeps serving
    assert greedy(tiny_engine, n=3)["meta_info"]["completion_tokens"] == 3


def test_concurrent_callers_are_batched_and_get_their_own_results(tiny_engine):
    prompts = [f"Request number {i}: tell me about topic {i * 7}." for i in range(12)]
    want = [greedy(tiny_engine, p, n=6)["output_ids"] for p in prompts]
    got: dict[int, list[int]] = {}
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, greedy(tiny_engine, prompts[i], n=6)["output_ids"]))
               for i in range(12)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    assert [got[i] for i in range(12)] == want
    assert max(r["num_seqs"] for r in tiny_engine.trace()) > 1


@pytest.mark.parametrize("threads,persistent", [(1, True), (2, False)])
def test_warmup_compiles_every_bucket_without_touching_the_cache(tiny_model_dir, monkeypatch, threads, persistent):
    """Warm-up compiles the variants on `threads` threads (ahead of time), then runs each: the
    requests after it compile nothing. persistent=False is the GPU's path (plain jax.jit, which
    reuses the ahead-of-time compile); True the CPU's on-disk executables."""
    from jaxsgl import kernels
    from jaxsgl.engine.engine import Engine
    from jaxsgl.model.compile_cache import PersistentJit

    from jaxsgl.engine.model_runner import ModelRunner
    from jaxsgl.engine.warmup import step_variants

    if not persistent:
        monkeypatch.setattr(PersistentJit, "_persistent", lambda self, static: False)
    # lowering runs on the calling thread in the variants' order (the same IR, so the same persistent
    # cache keys, in every process: Mosaic GPU kernels lowered on several threads at once hash differently)
    lowered, real_lower = [], ModelRunner.lower_async_step

    def recording_lower(self, step, si, flags, hint):
        lowered.append((threading.current_thread() is threading.main_thread(), step.num_tokens,
                        len(step.query_start) - 1, hint))
        return real_lower(self, step, si, flags, hint)

    monkeypatch.setattr(ModelRunner, "lower_async_step", recording_lower)

    # the Pallas impls' three step variants (generic, decode-only, long-extend-only), with a
    # long-extend bound this engine's 32-token prefill chunks reach; the reference compiles
    # all three as it would the kernels' (it ignores the hint)
    hints = (kernels.QLenHint(), kernels.DECODE_HINT, kernels.QLenHint(min_q_len=8))
    monkeypatch.setattr(kernels, "step_hints", lambda impl: hints)
    with Engine(str(tiny_model_dir), dtype="float32", max_running_requests=4, chunked_prefill_size=32,
                max_prefill_tokens=32, context_length=256, warmup=True, warmup_compile_threads=threads,
                debug_check_integrity=True) as eng:
        assert len(eng.builder.shapes()) > 1
        assert all(not np.any(np.asarray(k)) for k in eng.runner.kv.k)  # padding steps write no KV
        compiled = eng.runner.num_compiled()
        out = eng.generate(PROMPT, {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True})
        assert out["output_ids"] == greedy(eng, n=4)["output_ids"]
        # prefill and decode steps (each hint its own variant) were all compiled by the warm-up
        assert eng.runner.num_compiled() == compiled
        assert len(eng.builder.shapes()) < compiled == eng.warmup()
        assert lowered[:compiled] == [(True, T, S, hint) for (T, S, _), hint in step_variants(eng.runner, eng.builder)]
        assert kernels.step_hint([1, 1, 0], "auto") == hints[1] and kernels.step_hint([9, 30], "auto") == hints[2]
        assert kernels.step_hint([1, 30], "auto") == hints[0]


def test_warmup_covers_narrow_and_full_page_tables_of_the_kernels_path(tiny_model_dir, monkeypatch):
    """With a kernel impl (one compiled page-table width), steps send narrow tables that are widened
    on the device: a step must take its table in the same memory whether narrow or full, or each
    shape compiles again after warm-up (page-locked full tables vs device-widened narrow ones did,
    on the H200 mid-run)."""
    from jaxsgl.engine.engine import Engine
    from jaxsgl.scheduler import StepInputBuilder

    widths, real_build = set(), StepInputBuilder.build

    def recording_build(self, batch):
        step = real_build(self, batch)
        widths.add(step.page_table.shape[1])
        return step

    monkeypatch.setattr(StepInputBuilder, "build", recording_build)
    rng = np.random.default_rng(0)
    prompts = [[int(t) for t in rng.integers(100, 40000, n)] for n in (20, 60, 300)]
    with Engine(str(tiny_model_dir), dtype="float32", max_running_requests=4, chunked_prefill_size=64,
                context_length=512, attention_backend="pallas_interpret", warmup=True, skip_tokenizer_init=True,
                seq_buckets=[1, 4]) as eng:
        compiled = eng.runner.num_compiled()
        widths.clear()
        eng.generate(input_ids=prompts, sampling_params={"max_new_tokens": 3, "temperature": 0, "ignore_eos": True})
        assert widths == {16, 32}  # narrow (16 pages) and the full 512-token context
        assert eng.runner.num_compiled() == compiled


def test_warmup_sampled_covers_requests_with_temperature(tiny_model_dir):
    """SamplingFlags is part of the jit key: warmup_sampled compiles the temperature > 0 steps too, so a
    sampled request (the OpenAI API's default) compiles nothing after warm-up; greedy ones neither."""
    from jaxsgl.engine.engine import Engine
    from jaxsgl.engine.warmup import step_variants

    with Engine(str(tiny_model_dir), dtype="float32", max_running_requests=2, chunked_prefill_size=32,
                context_length=128, warmup=True, warmup_sampled=True, skip_tokenizer_init=True) as eng:
        compiled = eng.runner.num_compiled()
        assert compiled == 2 * len(step_variants(eng.runner, eng.builder))
        ids = [int(t) for t in np.random.default_rng(1).integers(100, 40000, 40)]
        sampled = eng.generate(input_ids=[ids, ids[:7]], sampling_params={"max_new_tokens": 5, "temperature": 0.8,
                                                                          "ignore_eos": True})
        greedy = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 5, "temperature": 0,
                                                              "ignore_eos": True})
        assert all(len(o["output_ids"]) == 5 for o in sampled) and len(greedy["output_ids"]) == 5
        assert eng.runner.num_compiled() == compiled


def test_a_failing_step_fails_its_requests_and_the_engine_recovers(tiny_engine, monkeypatch):
    real_run = tiny_engine.runner.run_async
    calls = {"n": 0}

    def flaky(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated device error")
        return real_run(*a, **kw)

    monkeypatch.setattr(tiny_engine.runner, "run_async", flaky)
    with pytest.raises(RuntimeError, match="simulated device error"):
        greedy(tiny_engine, n=3)
    monkeypatch.setattr(tiny_engine.runner, "run_async", real_run)
    assert greedy(tiny_engine, n=5)["meta_info"]["completion_tokens"] == 5
    tiny_engine.scheduler.check_integrity()


def test_request_priority_reaches_the_priority_eviction_policy(tiny_model_dir):
    from jaxsgl.engine.engine import Engine

    rng = np.random.default_rng(3)
    a, b, c = (rng.integers(3, 49152, n).tolist() for n in (80, 80, 100))
    with Engine(str(tiny_model_dir), dtype="float32", max_total_tokens=256, radix_eviction_policy="priority",
                debug_check_integrity=True) as eng:
        eng.generate(input_ids=a, sampling_params={"max_new_tokens": 0}, priority=5)
        eng.generate(input_ids=b, sampling_params={"max_new_tokens": 0}, priority=0)
        eng.generate(input_ids=c, sampling_params={"max_new_tokens": 0}, priority=0)  # forces an eviction
        again = eng.generate(input_ids=[a, b], sampling_params={"max_new_tokens": 0})
        assert again[0]["meta_info"]["cached_tokens"] == 64  # the important prefix survived
        assert again[1]["meta_info"]["cached_tokens"] == 0  # the unimportant one (older than c) went


def test_min_new_tokens_masks_stop_tokens_until_reached(tiny_engine):
    free = greedy(tiny_engine, n=6)["output_ids"]
    first = free[0]
    stopped = tiny_engine.generate(PROMPT, {"max_new_tokens": 6, "temperature": 0, "stop_token_ids": [first]})
    assert stopped["output_ids"] == [first] and stopped["meta_info"]["finish_reason"]["matched"] == first
    held = tiny_engine.generate(PROMPT, {"max_new_tokens": 6, "temperature": 0, "stop_token_ids": [first],
                                         "min_new_tokens": 3})
    assert len(held["output_ids"]) >= 3 and first not in held["output_ids"][:3]
    with pytest.raises(ValueError, match="min_new_tokens"):
        tiny_engine.generate(PROMPT, {"max_new_tokens": 2, "min_new_tokens": 3})
    tiny_engine.scheduler.check_integrity()


def test_wait_idle_returns_once_no_step_is_in_flight(tiny_engine):
    """With overlap, the step dispatched before a request was seen to finish may still run when generate()
    returns; wait_idle waits for it, so a trace read afterwards has every step's times."""
    before = tiny_engine.scheduler.step
    greedy(tiny_engine, n=8)
    assert tiny_engine.wait_idle(timeout=30.0)
    assert tiny_engine.loop.inflight is None and not tiny_engine.scheduler.has_work()
    steps = [s for s in tiny_engine.trace(before + 1) if s["num_seqs"]]
    assert steps and all(s["step_time"] is not None and s["end_time"] is not None for s in steps)
