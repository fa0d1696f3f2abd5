"""The interpreter against FakeEngine: every primitive, batching, hints, streaming, errors (milliseconds)."""
from __future__ import annotations

import threading

import pytest
from fake_engine import FakeEngine, greedy_continuation, token_logprob

import jaxsgl as sgl
from jaxsgl.constrained import REGEX_BOOL, REGEX_INT, REGEX_STR
from jaxsgl.lang import RuntimeBackend, global_config
from jaxsgl.lang.choices import argmax_first


@pytest.fixture
def engine():
    eng = FakeEngine()
    yield eng


@pytest.fixture
def backend(engine):
    return RuntimeBackend(engine)


def test_gen_appends_greedy_text_and_meta(backend, engine):
    @sgl.function
    def prog(s, q):
        s += "Q: " + q + "\nA:"
        s += sgl.gen("a", max_tokens=6, return_logprob=True)

    state = prog.run(q="hi", temperature=0, backend=backend)
    want = greedy_continuation("Q: hi\nA:", 6)
    assert state["a"] == want
    assert state.text() == "Q: hi\nA:" + want
    meta = state.get_meta_info("a")
    assert meta["completion_tokens"] == 6 and meta["finish_reason"]["type"] == "length"
    assert len(meta["output_token_logprobs"]) == 6
    assert state.error() is None
    assert engine.calls[0]["sampling_params"] == {"max_new_tokens": 6, "temperature": 0, "top_p": 1.0,
                                                  "top_k": -1, "min_p": 0.0, "frequency_penalty": 0.0,
                                                  "presence_penalty": 0.0, "ignore_eos": False}


def test_stop_string_trims_and_matches_unconstrained(backend):
    prompt = "abc"
    full = greedy_continuation(prompt, 40)
    stop = next(c for c in full[1:] if c in " \n.")

    @sgl.function
    def prog(s):
        s += prompt + sgl.gen("x", max_tokens=40, stop=stop)

    state = prog.run(temperature=0, backend=backend)
    assert stop not in state["x"]
    assert full.startswith(state["x"]) and len(state["x"]) < 40
    assert state.get_meta_info("x")["finish_reason"] == {"type": "stop", "matched": stop}


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_is_argmax_of_direct_logprobs_in_one_batched_call(backend, engine, method):
    prompt = "Pick: "
    choices = ["alpha", "beta", "be", "gamma ray"]

    @sgl.function
    def prog(s):
        s += prompt + sgl.select("c", choices=choices, choices_method=method)

    state = prog.run(backend=backend)
    cond = []
    for c in choices:
        ids = [ord(x) for x in prompt + c]
        cond.append([token_logprob(ids, p) for p in range(len(prompt), len(ids))])
    uncond = []
    for c in choices:
        ids = [ord(x) for x in c]
        uncond.append([token_logprob(ids, p) or 0.0 for p in range(len(ids))])
    if method is sgl.token_length_normalized:
        want = argmax_first([sum(x) / len(x) for x in cond])
    elif method is sgl.unconditional_likelihood_normalized:
        want = argmax_first([sum(a - b for a, b in zip(x, y)) / len(x) for x, y in zip(cond, uncond)])
    else:
        width = max(map(len, cond))
        rows = [x + [sum(x) / len(x)] * (width - len(x)) for x in cond]
        alive = list(range(len(choices)))
        for j in range(width):
            best = max(rows[i][j] for i in alive)
            alive = [i for i in alive if rows[i][j] == best]
        want = alive[0]
    assert state["c"] == choices[want]
    assert state.text() == prompt + choices[want]
    scoring = [c for c in engine.calls if c["return_logprob"]]
    assert scoring[0]["n"] == len(choices) and scoring[0]["sampling_params"]["max_new_tokens"] == 0
    assert scoring[0]["logprob_start_len"] == [len(prompt)] * len(choices)
    assert len(engine.calls) == (2 if method.requires_unconditional_logprobs else 1)
    assert state.get_meta_info("c")["normalized_prompt_logprobs"] == pytest.approx(
        [sum(x) / len(x) for x in cond])


def test_gen_with_choices_is_select(backend):
    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("c", choices=["a", "b"])

    assert prog.run(backend=backend)["c"] in ("a", "b")


def test_fork_join_gathers_variables_and_commits_prefix_first(backend, engine):
    @sgl.function
    def prog(s):
        s += "Shared context. " * 2
        forks = s.fork(3)
        forks += lambda i: f"Branch {i}:"
        forks += sgl.gen("ans", max_tokens=4)
        forks.join()

    state = prog.run(temperature=0, backend=backend)
    assert state["ans"] == [greedy_continuation(f"Shared context. Shared context. Branch {i}:", 4)
                            for i in range(3)]
    assert state.text() == "Shared context. " * 2
    first = engine.calls[0]
    assert first["prompts"] == ["Shared context. " * 2] and first["sampling_params"] == {"max_new_tokens": 0}
    assert all(c["sampling_params"]["max_new_tokens"] == 4 for c in engine.calls[1:])


def test_fork_hint_skips_text_the_engine_has_seen(backend, engine):
    @sgl.function
    def prog(s):
        s += "A long enough shared prefix. " + sgl.gen("g", max_tokens=3) + "\n"
        forks = s.fork(2)  # only "\n" is new: no commit
        forks += sgl.gen("a", max_tokens=2)
        forks.join()
        s += "Another long piece of new shared text."
        forks = s.fork(2)  # new text: commit first
        forks += sgl.gen("b", max_tokens=2)
        forks.join()

    state = prog.run(backend=backend)
    assert state.error() is None
    commits = [c["prompts"][0] for c in engine.calls if c["sampling_params"] == {"max_new_tokens": 0}]
    assert commits == [state.text()]


def test_fork_hint_can_be_disabled(backend, engine, monkeypatch):
    monkeypatch.setattr(global_config, "enable_fork_hint", False)

    @sgl.function
    def prog(s):
        s += "Shared prefix, long enough. "
        forks = s.fork(2)
        forks += sgl.gen("a", max_tokens=2)
        forks.join()

    prog.run(backend=backend).sync()
    assert all(c["sampling_params"].get("max_new_tokens") == 2 for c in engine.calls)


def test_fork_branches_run_concurrently(backend):
    eng = FakeEngine(step_delay=0.0)
    barrier = threading.Barrier(2, timeout=5)
    original = eng._one

    def waiting_one(ids, sp, lp, st):
        if sp.get("max_new_tokens") == 1:
            barrier.wait()  # both branches must be inside generate() at once
        return original(ids, sp, lp, st)

    eng._one = waiting_one

    @sgl.function
    def prog(s):
        s += "P"
        forks = s.fork(2)
        forks += sgl.gen("a", max_tokens=1)
        forks.join()

    state = prog.run(backend=RuntimeBackend(eng))
    assert state.error() is None and len(state["a"]) == 2


def test_concate_and_append_join(backend):
    @sgl.function
    def prog(s):
        s += "S:"
        forks = s.fork(2)
        forks += ["one", "two"]
        forks.join("concate_and_append")

    assert prog.run(backend=backend).text() == "S:onetwo"


def test_roles_render_like_apply_chat_template(backend, engine):
    tok = engine.tokenizer

    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.")
        s += sgl.user("Hi there")
        s += sgl.assistant(sgl.gen("a1", max_tokens=3))
        with s.user():
            s += "Second"
        s += sgl.assistant_begin()
        s += sgl.gen("a2", max_tokens=3)
        s += sgl.assistant_end()

    state = chat.run(temperature=0, backend=backend)
    msgs = state.messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert msgs[2]["content"] == state["a1"]
    assert state.text() == tok.apply_chat_template(msgs, tokenize=False)
    gen_prompts = [c["prompts"][0] for c in engine.calls]
    assert gen_prompts[0] == tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert gen_prompts[1] == tok.apply_chat_template(msgs[:4], tokenize=False, add_generation_prompt=True)


def test_default_system_prompt_comes_from_the_template(backend, engine):
    @sgl.function
    def chat(s):
        s += sgl.user_begin() + "Q" + sgl.user_end()
        s += sgl.assistant("A")

    state = chat.run(backend=backend)
    assert state.text() == engine.tokenizer.apply_chat_template(state.messages(), tokenize=False)
    assert "You are a helpful assistant." in state.text()


def test_run_batch_equals_one_by_one_and_precaches_prefix(backend, engine):
    sys_prompt = "You are a terse assistant who answers with few letters only. " * 2

    @sgl.function
    def prog(s, q):
        s += sgl.system(sys_prompt)
        s += sgl.user(q)
        s += sgl.assistant(sgl.gen("a", max_tokens=5))

    qs = [{"q": f"question {i}"} for i in range(64)]
    batch = prog.run_batch(qs, temperature=0, num_threads=16, progress_bar=True, backend=backend)
    first = engine.calls[0]
    assert first["sampling_params"] == {"max_new_tokens": 0}
    assert first["prompts"][0].endswith("<|im_start|>user\n") and sys_prompt in first["prompts"][0]
    singles = [prog.run(q=x["q"], temperature=0, backend=backend) for x in qs]
    assert [s["a"] for s in batch] == [s["a"] for s in singles]
    assert [s.text() for s in batch] == [s.text() for s in singles]
    pos = prog.run_batch([("question 0",), ("question 1",)], temperature=0, backend=backend)
    assert [s["a"] for s in pos] == [singles[0]["a"], singles[1]["a"]]


def test_run_batch_positional_arity_checked(backend):
    @sgl.function
    def prog(s, a, b=1):
        s += str(a)

    with pytest.raises(ValueError):
        prog.run_batch([(1, 2, 3)], backend=backend)


def test_trace_prefix(backend):
    @sgl.function
    def prog(s, q):
        s += "Constant intro. "
        s += "Q: " + q
        s += sgl.gen("a")

    @sgl.function
    def fprog(s, q):
        s += "Head "
        s += f"Q: {q}"

    assert prog.trace_prefix(backend) == "Constant intro. Q: "
    assert fprog.trace_prefix(backend) == "Head "


@pytest.mark.parametrize("incremental", [False, True])
def test_stream_text_iter_equals_non_streamed(incremental):
    eng = FakeEngine(step_delay=0.002, incremental_streaming_output=incremental)
    be = RuntimeBackend(eng)

    @sgl.function
    def prog(s):
        s += "Story:"
        s += sgl.gen("story", max_tokens=12)
        s += " END"

    ref = prog.run(temperature=0, backend=be)
    st = prog.run(temperature=0, stream=True, backend=be)
    pieces = list(st.text_iter("story"))
    assert "".join(pieces) == ref["story"] and len(pieces) > 1
    st2 = prog.run(temperature=0, stream=True, backend=be)
    assert "".join(st2.text_iter()) == ref.text()
    assert st2.text() == ref.text()


def test_program_exception_is_raised_from_run_and_kept(backend):
    @sgl.function
    def bad(s):
        s += "x" + sgl.gen("a", max_tokens=2)
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):  # SGLang's run() re-raises the body's exception
        bad.run(backend=backend)
    with pytest.warns(RuntimeWarning, match="boom"):  # a stream runs the body on a thread: recorded, warned
        st = bad.run(stream=True, backend=backend)
        assert list(st.text_iter()) and isinstance(st.error(), ZeroDivisionError)


def test_backend_failure_warns_and_releases_waiters(backend):
    @sgl.function
    def prog(s, fail):
        s += ("<<FAIL>>" if fail else "ok") + sgl.gen("a", max_tokens=2)
        s += sgl.gen("b", max_tokens=2)

    with pytest.warns(RuntimeWarning, match=r"run_batch: 1 of 4 programs failed \(#1: RuntimeError"):
        states = prog.run_batch([{"fail": i == 1} for i in range(4)], backend=backend)
    assert [s.error() is None for s in states] == [True, False, True, True]
    assert isinstance(states[1].error(), RuntimeError)
    with pytest.raises(KeyError):
        states[1]["a"]
    with pytest.warns(RuntimeWarning, match="fake backend failure"):  # run() returns; the error is kept
        st, state = prog.run(fail=True, stream=True, backend=backend), prog.run(fail=True, backend=backend)
        assert list(st.text_iter("b")) == [] and isinstance(state.error(), RuntimeError)
    assert isinstance(st.error(), RuntimeError)


def test_reading_failed_var_inside_program_raises_from_run(backend):
    @sgl.function
    def prog(s):
        s += "<<FAIL>>" + sgl.gen("a", max_tokens=2)
        s += "after " + s["a"]

    with pytest.warns(RuntimeWarning), pytest.raises(KeyError, match="fake backend failure") as info:
        prog.run(backend=backend)
    assert isinstance(info.value.__cause__, RuntimeError)


@pytest.mark.parametrize("kwargs,want", [
    ({"regex": r"\d+"}, {"regex": r"\d+"}),
    ({"json_schema": '{"type": "object"}'}, {"json_schema": '{"type": "object"}'}),
    ({"json_schema": {"type": "object"}}, {"json_schema": '{"type": "object"}'}),
    ({"dtype": int}, {"regex": REGEX_INT}), ({"dtype": "bool"}, {"regex": REGEX_BOOL}),
    ({"stop_regex": r"\.$"}, {"stop_regex": [r"\.$"]})])
def test_constraints_reach_the_engine(backend, engine, kwargs, want):
    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen("n", max_tokens=4, **kwargs)

    assert prog.run(backend=backend).error() is None
    sp = engine.calls[-1]["sampling_params"]
    assert {k: sp[k] for k in want} == want


def test_gen_int_and_gen_string_use_sglang_regexes(backend, engine):
    @sgl.function
    def prog(s):
        s += "a=" + sgl.gen_int("a", max_tokens=4) + " b=" + sgl.gen_string("b", max_tokens=4)

    assert prog.run(backend=backend).error() is None
    assert [c["sampling_params"]["regex"] for c in engine.calls[-2:]] == [REGEX_INT, REGEX_STR]


def test_two_constraints_on_one_gen_fail_clearly(backend, engine):
    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen("n", max_tokens=4, regex="a", dtype=int)

    err = prog.run(backend=backend).error()
    assert isinstance(err, ValueError) and "only one of" in str(err)
    assert engine.calls == []


def test_bad_regex_fails_at_call_site():
    with pytest.raises(Exception):
        sgl.gen("x", regex="(unclosed")


def test_var_scope_copy_and_contains(backend):
    @sgl.function
    def prog(s):
        with s.var_scope("v"):
            s += "abc"
        with s.copy() as c:
            c += "z" + sgl.gen("inner", max_tokens=1)
        s["manual"] = 5

    state = prog.run(backend=backend)
    assert state["v"] == "abc" and "manual" in state and state["manual"] == 5
    assert len(state["inner"]) == 1


def test_set_default_backend_accepts_engine(engine):
    old = global_config.default_backend
    try:
        sgl.set_default_backend(engine)

        @sgl.function
        def prog(s):
            s += "a" + sgl.gen("x", max_tokens=1)

        assert prog.run(temperature=0)["x"] == greedy_continuation("a", 1)
        assert sgl.get_server_info()["requests"] == 1
    finally:
        global_config.default_backend = old
