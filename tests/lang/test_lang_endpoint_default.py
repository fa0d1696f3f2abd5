"""The default model (SmolLM2-135M-Instruct) behind a real server: programs through RuntimeEndpoint and
OpenAI equal the in-process results, and API speculative execution on the paper's kind of program
(one gen per field of a document) saves calls and input tokens with the same fields."""
from __future__ import annotations

import pytest
from served import assert_no_leaked_pages, start_served

import jaxsgl as sgl
from jaxsgl.lang.demo_spec import DOCS, FIELDS, extract_fields, measure


@pytest.fixture(scope="module")
def srv(default_model_dir):
    served = start_served(default_model_dir, "default", context_length=1024)
    yield served
    served.close()


def test_program_through_every_backend_equals_in_process(srv):
    @sgl.function
    def prog(s):
        s += sgl.system("You are a helpful assistant.")
        s += sgl.user("What is the capital of France?")
        s += sgl.assistant(sgl.gen("answer", max_tokens=12))
        s += sgl.user("Is that city large?")
        s += sgl.assistant(sgl.select("yes", choices=["Yes.", "No."]))

    ref = prog.run(temperature=0, backend=srv.local)
    assert ref.error() is None and "Paris" in ref["answer"]
    for name in ("endpoint", "completion"):
        st = prog.run(temperature=0, backend=getattr(srv, name))
        assert (st["answer"], st["yes"], st.text()) == (ref["answer"], ref["yes"], ref.text()), name

    @sgl.function
    def forked(s):
        s += "Two colours of the rainbow:\n"
        forks = s.fork(2)
        forks += lambda i: f"{i + 1}." + sgl.gen("colour", max_tokens=3, stop="\n")
        forks.join()

    ref = forked.run(temperature=0, backend=srv.local)
    assert forked.run(temperature=0, backend=srv.endpoint)["colour"] == ref["colour"]


def test_api_speculation_on_field_extraction(srv):
    docs = DOCS[:1]
    ref_usage, ref = measure(srv.endpoint, None, docs)
    off_usage, off = measure(srv.completion, None, docs)
    on_usage, on = measure(srv.completion, 48, docs)
    chat_usage, chat = measure(srv.chat, 48, docs)
    assert ref[0][0] == "Marie Curie" and off == on == chat == ref
    assert ref_usage["num_api_calls"] == off_usage["num_api_calls"] == len(FIELDS)
    assert on_usage["num_api_calls"] == chat_usage["num_api_calls"] == 1
    assert on_usage["prompt_tokens"] * 3 < off_usage["prompt_tokens"]
    with pytest.warns(RuntimeWarning, match="chat model"):  # without speculation a chat API cannot do this
        err = sgl.function(extract_fields).run(doc=docs[0], temperature=0, backend=srv.chat).error()
    assert isinstance(err, ValueError)


def test_engine_leaks_nothing(srv):
    assert_no_leaked_pages(srv.engine)
