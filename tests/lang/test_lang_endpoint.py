"""Programs through real HTTP (RuntimeEndpoint, and OpenAI on jaxsgl's own OpenAI API) equal the in-process
results on the very engine the server serves: tiny random Llama with SmolLM2's tokenizer, greedy."""
from __future__ import annotations

import asyncio
import json

import pytest
from served import assert_no_leaked_pages, make_tiny_model, start_served

import jaxsgl as sgl

QUESTIONS = ["What is the capital of France?", "Name a primary colour.", "How many legs has a spider?",
             "What do bees make?"]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, default_model_dir):
    model = make_tiny_model(tmp_path_factory.mktemp("lang_tiny"), default_model_dir)
    served = start_served(model, "tiny")
    yield served
    served.close()


def run_all(srv, program, backends=("local", "endpoint", "completion"), **kw):
    """The program's state on each backend (greedy), checked for errors."""
    out = {}
    for name in backends:
        state = program.run(temperature=0, backend=getattr(srv, name), **kw)
        assert state.error() is None, (name, state.error())
        out[name] = state
    return out


def test_gen_text_and_meta(srv):
    @sgl.function
    def qa(s, q):
        s += "Question: " + q + "\nAnswer:" + sgl.gen("a", max_tokens=12, stop="\n")
        s += "\nAnother:" + sgl.gen("b", max_tokens=6)

    states = run_all(srv, qa, q=QUESTIONS[0])
    ref = states["local"]
    for name, st in states.items():
        assert (st["a"], st["b"], st.text()) == (ref["a"], ref["b"], ref.text()), name
    assert states["endpoint"].get_meta_info("a")["prompt_tokens"] == ref.get_meta_info("a")["prompt_tokens"]


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_all_methods(srv, method):
    choices = [" Paris", " London", " the city of Lyon"]

    @sgl.function
    def prog(s):
        s += "The capital of France is" + sgl.select("c", choices=choices, choices_method=method)

    srv.endpoint.token_usage.reset()
    states = run_all(srv, prog)
    assert srv.endpoint.token_usage.num_api_calls == (2 if method.requires_unconditional_logprobs else 1)
    ref = states["local"].get_meta_info("c")
    for name, st in states.items():
        assert st["c"] == states["local"]["c"], name
        assert st.get_meta_info("c")["normalized_prompt_logprobs"] == pytest.approx(
            ref["normalized_prompt_logprobs"], abs=1e-4), name


def test_fork_join_and_concate_and_append(srv):
    @sgl.function
    def prog(s):
        s += "Three facts about the sea:\n"
        forks = s.fork(3)
        forks[0] += "First,"
        forks += lambda i: f" {i + 1}." + sgl.gen("fact", max_tokens=5)
        forks.join()
        branches = s.fork(2)
        branches += sgl.gen("idea", max_tokens=4)
        branches.join("concate_and_append")
        s += "\nSo:" + sgl.gen("summary", max_tokens=4)

    states = run_all(srv, prog)
    for name, st in states.items():
        assert (st["fact"], st["summary"], st.text()) == (states["local"]["fact"], states["local"]["summary"],
                                                          states["local"].text()), name


def test_roles_multi_turn_chat(srv):
    @sgl.function
    def chat(s, q1, q2):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user(q1)
        s += sgl.assistant(sgl.gen("a1", max_tokens=10))
        s += sgl.user(q2)
        s += sgl.assistant(sgl.gen("a2", max_tokens=10))

    states = run_all(srv, chat, backends=("local", "endpoint", "completion", "chat"), q1=QUESTIONS[0],
                     q2=QUESTIONS[1])
    ref = states["local"]
    for name, st in states.items():
        assert (st["a1"], st["a2"], st.messages(), st.text()) == (ref["a1"], ref["a2"], ref.messages(),
                                                                  ref.text()), name


def test_streaming_equals_non_streaming(srv):
    @sgl.function
    def prog(s):
        s += "Once upon a time" + sgl.gen("story", max_tokens=12)

    @sgl.function
    def chat(s):
        s += sgl.user("Tell me a story.")
        s += sgl.assistant(sgl.gen("story", max_tokens=12))

    for program, names in ((prog, ("endpoint", "completion")), (chat, ("endpoint", "chat"))):
        ref = program.run(temperature=0, backend=srv.local)
        for name in names:
            st = program.run(temperature=0, stream=True, backend=getattr(srv, name))
            assert "".join(st.text_iter("story")) == ref["story"], name
            assert st.text() == ref.text() and st.error() is None, name


def test_run_batch_of_32(srv):
    @sgl.function
    def prog(s, q):
        s += "You answer questions in a few words.\nQ: " + q + "\nA:" + sgl.gen("a", max_tokens=6, stop="\n")

    batch = [{"q": f"{QUESTIONS[i % 4]} (case {i})"} for i in range(32)]
    outs = {name: prog.run_batch(batch, temperature=0, backend=getattr(srv, name))
            for name in ("local", "endpoint", "completion")}
    for name, states in outs.items():
        assert all(s.error() is None for s in states), name
        assert [s["a"] for s in states] == [s["a"] for s in outs["local"]], name


def test_regex_and_json_schema(srv):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}

    @sgl.function
    def prog(s):
        s += "A number: " + sgl.gen("num", max_tokens=8, regex=r"[0-9]{1,4}")
        s += "\nAs JSON: " + sgl.gen("obj", max_tokens=24, json_schema=json.dumps(schema))

    states = run_all(srv, prog)
    for name, st in states.items():
        assert (st["num"], st["obj"]) == (states["local"]["num"], states["local"]["obj"]), name
        assert st["num"].isdigit() and isinstance(json.loads(st["obj"])["n"], int), name


def test_api_speculation_falls_back_exactly_on_a_miss(srv):
    """The tiny random model never writes the program's labels, so every fill misses: the outputs equal a
    run without speculation, and speculation made no more calls than it (the first gen still saves)."""
    def body(s):
        s += "Record:\nName:" + sgl.gen("name", max_tokens=6, stop="\n")
        s += "\nAge:" + sgl.gen("age", max_tokens=6, stop="\n")
        s += "\nJob:" + sgl.gen("job", max_tokens=6, stop="\n")

    plain, spec = sgl.function(body), sgl.function(num_api_spec_tokens=24)(body)
    be = srv.completion
    be.token_usage.reset()
    ref = plain.run(temperature=0, backend=be)
    ref.sync()
    off = be.token_usage.snapshot()
    be.token_usage.reset()
    got = spec.run(temperature=0, backend=be)
    got.sync()
    on = be.token_usage.snapshot()
    assert got.error() is None and [got[k] for k in ("name", "age", "job")] == [ref[k] for k in ("name", "age", "job")]
    assert got.text() == ref.text() == plain.run(temperature=0, backend=srv.local).text()
    assert off["num_api_calls"] == 3 and 1 <= on["num_api_calls"] <= 3


def test_endpoint_surface(srv):
    ep = srv.endpoint
    assert ep.get_model_name() == ep.model_info["model_path"] and "internal_states" in ep.get_server_info()
    assert sgl.get_server_info(ep)["served_model_name"] == "tiny"
    ep.cache_prefix("A prefix worth caching for later requests.")
    assert ep.flush_cache() is True and sgl.flush_cache(ep) is True
    assert srv.chat.get_model_name() == "tiny" and srv.chat.is_chat_model and not srv.completion.is_chat_model


def test_text_async_iter_with_logprobs_over_http(srv):
    @sgl.function
    def prog(s):
        s += "Once upon a time" + sgl.gen("story", max_tokens=8, return_logprob=True)

    ref = prog.run(temperature=0, backend=srv.local)

    async def collect():
        st = prog.run(temperature=0, stream=True, backend=srv.endpoint)
        return [p async for p in st.text_async_iter("story", return_meta_data=True)]

    pieces = asyncio.run(asyncio.wait_for(collect(), 60))
    assert "".join(p for p, _ in pieces) == ref["story"]
    got = [e[1] for e in pieces[-1][1]["output_token_logprobs"]]
    assert got == [e[1] for e in ref.get_meta_info("story")["output_token_logprobs"]] and len(got) == 8


def test_runtime_surface_and_engine_export(srv):
    from jaxsgl.engine.engine import Engine

    assert sgl.Engine is Engine
    rt = sgl.Runtime(engine=srv.engine)
    assert rt.url is None and rt.get_tokenizer() is srv.engine.tokenizer and rt.endpoint.endpoint is rt.endpoint
    url = rt.serve()
    try:
        assert rt.url == url and rt.generate_url == url + "/generate"
        ep = sgl.RuntimeEndpoint(rt.url)
        out = json.loads(rt.generate("Hello there", {"max_new_tokens": 4, "temperature": 0}))
        assert out["text"] == srv.engine.generate("Hello there", {"max_new_tokens": 4, "temperature": 0})["text"]

        async def stream():
            return "".join([p async for p in rt.async_generate("Hello there", {"max_new_tokens": 4,
                                                                               "temperature": 0})])
        assert asyncio.run(asyncio.wait_for(stream(), 60)) == out["text"]
        rt.cache_prefix("A prefix to cache.")

        @sgl.function
        def prog(s):
            s += "Hello there" + sgl.gen("a", max_tokens=4)
        assert prog.run(temperature=0, backend=ep)["a"] == prog.run(temperature=0, backend=rt)["a"] == out["text"]
        ep.shutdown()
    finally:
        rt.shutdown()
    assert rt.url is None and srv.engine.generate("x", {"max_new_tokens": 1})["text"] is not None  # engine lives


def test_engine_leaks_nothing(srv):
    assert_no_leaked_pages(srv.engine)
