"""The OpenAI backend and API speculative execution against a scripted stand-in client (milliseconds)."""
from __future__ import annotations

import pytest
from fake_engine import CharTokenizer, FakeEngine
from fake_openai import FakeOpenAIClient, ScriptedModel

import jaxsgl as sgl
from jaxsgl.lang import BackendError, RuntimeBackend
from jaxsgl.lang.api_spec import Speculation
from jaxsgl.lang.backend.openai_backend import OpenAI, token_pieces

DOC = "Ada Lovelace was born in 1815 in London. She worked as a mathematician.\nExtract the fields.\n"
FIELDS = "Name: Ada Lovelace\nBirth year: 1815\nCity: London\nJob: mathematician\n"
LABELS = [("name", "Name: "), ("year", "\nBirth year: "), ("city", "\nCity: "), ("job", "\nJob: ")]


def extract_body(s, doc, labels=LABELS):
    s += doc
    for name, label in labels:
        s += label + sgl.gen(name, max_tokens=16, stop="\n")


def completion_backend(script: str = DOC + FIELDS) -> tuple[OpenAI, FakeOpenAIClient]:
    client = FakeOpenAIClient(ScriptedModel(script))
    return OpenAI("fake", client=client, is_chat_model=False, chat_template="chatml"), client


def run_counted(program, backend, **kw):
    backend.token_usage.reset()
    state = program.run(temperature=0, backend=backend, **kw)
    assert state.error() is None, state.error()
    return state, backend.token_usage.snapshot()


def test_completion_gen_and_usage():
    be, client = completion_backend()

    @sgl.function
    def prog(s):
        s += DOC + "Name: " + sgl.gen("name", max_tokens=16, stop="\n")

    state, usage = run_counted(prog, be)
    assert state["name"] == "Ada Lovelace" and state.get_meta_info("name")["finish_reason"]["type"] == "stop"
    assert usage == {"num_api_calls": 1, "prompt_tokens": len(DOC) + 6, "completion_tokens": len("Ada Lovelace")}
    assert client.calls[0]["stop"] == ["\n"] and client.calls[0]["prompt"] == DOC + "Name: "


def test_speculation_hit_makes_one_call_with_the_same_outputs():
    be, client = completion_backend()
    plain, plain_usage = run_counted(sgl.function(extract_body), be, doc=DOC)
    spec, spec_usage = run_counted(sgl.function(num_api_spec_tokens=64)(extract_body), be, doc=DOC)
    want = {"name": "Ada Lovelace", "year": "1815", "city": "London", "job": "mathematician"}
    assert {k: plain[k] for k in want} == want == {k: spec[k] for k in want}
    assert spec.text() == plain.text()
    assert plain_usage["num_api_calls"] == 4 and spec_usage["num_api_calls"] == 1
    assert spec_usage["prompt_tokens"] < plain_usage["prompt_tokens"] / 3
    last = client.calls[-1]
    assert last["stop"] is None and last["max_tokens"] == 64 and last["logprobs"] == 0


def test_speculation_miss_falls_back_to_the_outputs_without_speculation():
    labels = [("name", "Name: "), ("year", "\nYEAR OF BIRTH: "), ("city", "\nCity: "), ("job", "\nJob: ")]
    be, _ = completion_backend()
    plain, plain_usage = run_counted(sgl.function(lambda s, doc: extract_body(s, doc, labels)), be, doc=DOC)
    spec, spec_usage = run_counted(sgl.function(num_api_spec_tokens=64)(lambda s, doc: extract_body(s, doc, labels)),
                                   be, doc=DOC)
    assert plain["name"] == spec["name"] == "Ada Lovelace"
    assert [spec[n] for n, _ in labels] == [plain[n] for n, _ in labels] and spec.text() == plain.text()
    assert 2 <= spec_usage["num_api_calls"] <= plain_usage["num_api_calls"] == 4


@pytest.mark.parametrize("max_tokens", [1, 3, 7])
def test_speculation_honours_max_tokens_in_the_speculated_text(max_tokens):
    def body(s):
        s += DOC + "Name: " + sgl.gen("name", max_tokens=max_tokens, stop="\n")
        s += sgl.gen("rest", max_tokens=5)

    be, _ = completion_backend()
    plain, _ = run_counted(sgl.function(body), be)
    spec, usage = run_counted(sgl.function(num_api_spec_tokens=40)(body), be)
    assert (spec["name"], spec["rest"]) == (plain["name"], plain["rest"]) == ("Ada Lovelace"[:max_tokens],
                                                                             "Ada Lovelace"[max_tokens:][:5])
    assert usage["num_api_calls"] == 1


def chat_script(messages_before: list[dict], reply: str) -> str:
    return CharTokenizer().apply_chat_template(messages_before, add_generation_prompt=True) + reply


def chat_program(spec_tokens, labels=LABELS):
    def body(s, doc):
        s += sgl.system("Extract the fields.")
        s += sgl.user(doc)
        with s.assistant():
            for name, label in labels:
                s += label + sgl.gen(name, max_tokens=16, stop="\n")
    return sgl.function(num_api_spec_tokens=spec_tokens)(body)


MESSAGES = [{"role": "system", "content": "Extract the fields."}, {"role": "user", "content": DOC}]


def chat_backend(reply: str = FIELDS) -> tuple[OpenAI, FakeOpenAIClient]:
    client = FakeOpenAIClient(ScriptedModel(chat_script(MESSAGES, reply)))
    return OpenAI("fake-chat", client=client, chat_template=RuntimeBackend(FakeEngine()).chat_template), client


def test_chat_model_gen_must_open_the_assistant_turn_without_speculation():
    be, _ = chat_backend()
    with pytest.warns(RuntimeWarning, match="chat model"):
        state = chat_program(None).run(doc=DOC, temperature=0, backend=be)
        err = state.error()
    assert isinstance(err, ValueError) and "num_api_spec_tokens" in str(err) and "fake-chat" in str(err)


def test_chat_speculation_answers_the_turn_with_one_call():
    be, client = chat_backend()
    state, usage = run_counted(chat_program(96), be, doc=DOC)
    assert [state[n] for n, _ in LABELS] == ["Ada Lovelace", "1815", "London", "mathematician"]
    assert usage["num_api_calls"] == 1 and client.calls[0]["messages"] == MESSAGES
    assert state.messages()[-1] == {"role": "assistant", "content": FIELDS.rstrip("\n")}
    assert state.text() == CharTokenizer().apply_chat_template(state.messages())


def test_chat_speculation_retries_with_more_tokens_when_the_reply_runs_out():
    be, client = chat_backend()
    state, usage = run_counted(chat_program(20), be, doc=DOC)  # the reply is 68 tokens long
    assert state["job"] == "mathematician"
    assert usage["num_api_calls"] == 3 and [c["max_tokens"] for c in client.calls] == [20, 40, 80]


def test_chat_speculation_mismatch_is_an_error_naming_the_term():
    be, client = chat_backend(reply=FIELDS.replace("City:", "Town:"))
    with pytest.warns(RuntimeWarning, match="does not follow the program"):
        state = chat_program(96).run(doc=DOC, temperature=0, backend=be)
        err = state.error()
    assert isinstance(err, RuntimeError) and "\\nCity: " in str(err) and "fake-chat" in str(err)
    assert len(client.calls) == 1  # greedy: a retry would give the same reply


def test_reading_a_deferred_variable_inside_its_turn_is_an_error():
    be, _ = chat_backend()

    @sgl.function(num_api_spec_tokens=64)
    def prog(s):
        s += sgl.user(DOC)
        with s.assistant():
            s += "Name: " + sgl.gen("name", max_tokens=16, stop="\n")
            s += s["name"]

    with pytest.raises(RuntimeError, match="read it after the turn"):
        prog.run(temperature=0, backend=be)


def test_chat_gen_opening_the_turn_and_streaming():
    be, client = chat_backend()

    @sgl.function
    def prog(s):
        s += sgl.system("Extract the fields.")
        s += sgl.user(DOC)
        s += sgl.assistant(sgl.gen("fields", max_tokens=128))

    state, usage = run_counted(prog, be)
    assert state["fields"] == FIELDS and client.calls[-1]["messages"] == MESSAGES
    st = prog.run(temperature=0, stream=True, backend=be)
    assert "".join(st.text_iter("fields")) == FIELDS


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_equals_the_engine_backend(method):
    be, client = completion_backend()
    local = RuntimeBackend(FakeEngine())

    @sgl.function
    def prog(s):
        s += "The sky is" + sgl.select("c", choices=[" blue", " green", " a deep blue."], choices_method=method)

    a, b = prog.run(backend=be), prog.run(backend=local)
    assert a["c"] == b["c"]
    assert a.get_meta_info("c")["normalized_prompt_logprobs"] == pytest.approx(
        b.get_meta_info("c")["normalized_prompt_logprobs"])
    assert client.calls[0]["echo"] and client.calls[0]["max_tokens"] == 0
    assert len(client.calls) == (2 if method.requires_unconditional_logprobs else 1)


def test_backend_failure_names_backend_and_request():
    be = OpenAI("fake", client=FakeOpenAIClient(ScriptedModel(), fail="connection refused"), is_chat_model=False)

    @sgl.function
    def prog(s):
        s += "Hello" + sgl.gen("a", max_tokens=4)

    with pytest.warns(RuntimeWarning):
        err = prog.run(backend=be).error()
    assert isinstance(err, BackendError)
    assert "OpenAI('fake'" in str(err) and "connection refused" in str(err) and "prompt='Hello'" in str(err)


def test_fill_ending_inside_a_speculated_token_is_a_miss():
    pieces = ["\n", "City", ":", " Warsaw", "\n"]
    assert not Speculation("\nCity: Warsaw\n", list(pieces), False).consume("\nCity: ")  # " Warsaw" is one token
    spec = Speculation("\nCity: Warsaw\n", list(pieces), False)
    assert spec.consume("\nCity:") and spec.pieces == [" Warsaw", "\n"]
    assert Speculation("\nCity: Warsaw\n", list(pieces), False).consume("\nCity: ", on_token_boundary=False)
    assert token_pieces("ab", ["a", "b", "<|im_end|>"]) == ["a", "b"] and token_pieces("ab", ["a", "\ufffd"]) is None
