"""The OpenAI API through the unmodified `openai` client: completions, chat, streaming, n=2, logprobs,
usage with cached tokens, errors; greedy text equals Engine.generate."""
from __future__ import annotations

import json

import httpx
import openai
import pytest
from harness import assert_no_leaked_pages

from jaxsgl.tokenizer import chat_prompt_ids

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Once upon a time, in a land far away,"]
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url + "/v1", api_key="unused", timeout=120, max_retries=0)


def greedy(engine, prompt, n=12, **kw):
    return engine.generate(prompt, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True, **kw})


def test_completions_equal_engine_generate(served, client):
    ref = [greedy(served.engine, p) for p in PROMPTS]
    for p, r in zip(PROMPTS, ref):
        out = client.completions.create(model="tiny", prompt=p, max_tokens=12, temperature=0,
                                        extra_body={"ignore_eos": True})
        assert out.choices[0].text == r["text"] and out.choices[0].finish_reason == "length"
        assert out.usage.prompt_tokens == r["meta_info"]["prompt_tokens"] and out.usage.completion_tokens == 12
        assert out.usage.prompt_tokens_details.cached_tokens >= 0
    batch = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=12, temperature=0,
                                      extra_body={"ignore_eos": True})
    assert [c.text for c in sorted(batch.choices, key=lambda c: c.index)] == [r["text"] for r in ref]


def test_completion_streaming_equals_non_streaming_and_usage(served, client):
    whole = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10, temperature=0)
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason


def test_cached_tokens_reported(served, client):
    long = "A long shared system prompt about astronomy and the stars. " * 6
    client.completions.create(model="tiny", prompt=long + "One", max_tokens=2, temperature=0)
    out = client.completions.create(model="tiny", prompt=long + "Two", max_tokens=2, temperature=0)
    assert out.usage.prompt_tokens_details.cached_tokens >= 16


def test_completion_logprobs(served, client):
    out = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=5, temperature=0, logprobs=2,
                                    extra_body={"ignore_eos": True})
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    assert "".join(lp.tokens) == out.choices[0].text and lp.text_offset[0] == 0
    assert all(len(t) <= 2 for t in lp.top_logprobs)


def test_chat_equals_engine_on_the_chat_template(served, client):
    ids = chat_prompt_ids(served.engine.tokenizer, MESSAGES)
    ref = served.engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 10, "temperature": 0})
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=10, temperature=0)
    assert out.choices[0].message.content == ref["text"] and out.choices[0].message.role == "assistant"
    assert out.usage.prompt_tokens == len(ids)
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name a "}, {"type": "text", "text": "colour."}]}]
    a = client.chat.completions.create(model="tiny", messages=parts, max_completion_tokens=6, temperature=0)
    b = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Name a colour."}],
                                       max_completion_tokens=6, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_chat_streaming_n2_and_usage(served, client):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, n=2)
    assert len(whole.choices) == 2 and whole.choices[0].message.content == whole.choices[1].message.content
    assert 0 < whole.usage.completion_tokens <= 16
    stream = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=8, temperature=0, n=2,
                                            stream=True, stream_options={"include_usage": True})
    texts = {0: "", 1: ""}
    reasons = {}
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                reasons[c.index] = c.finish_reason
    assert texts == {0: whole.choices[0].message.content, 1: whole.choices[1].message.content}
    assert set(reasons) == {0, 1} and usage.completion_tokens == whole.usage.completion_tokens


def test_sampled_n2_differs_and_seed_reproduces(served, client):
    kw = dict(model="tiny", prompt=PROMPTS[0], max_tokens=8, temperature=1.0, n=2, seed=3,
              extra_body={"ignore_eos": True})
    a, b = client.completions.create(**kw), client.completions.create(**kw)
    assert [c.text for c in a.choices] == [c.text for c in b.choices]
    assert a.choices[0].text != a.choices[1].text


def test_chat_logprobs(served, client):
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=4, temperature=0,
                                         logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens and all(len(c.top_logprobs) == 3 for c in content)
    assert content[0].token == content[0].top_logprobs[0].token


def test_stop_strings(served, client):
    full = greedy(served.engine, PROMPTS[1])["text"]
    stop = full[4:7]
    out = client.completions.create(model="tiny", prompt=PROMPTS[1], max_tokens=12, temperature=0, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert out.choices[0].text == full[:full.find(stop)] and out.choices[0].finish_reason == "stop"


def test_errors_are_openai_shaped(served, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x")
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=10**9)
    r = httpx.post(served.url + "/v1/completions", content=b"{not json", timeout=10)
    body = r.json()
    assert r.status_code == 400 and set(body["error"]) == {"message", "type", "param", "code"}
    assert_no_leaked_pages(served.engine)


SCHEMA = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]}, "bright": {"type": "boolean"}},
          "required": ["colour", "bright"], "additionalProperties": False}


def test_response_format_json_schema(served, client):
    """A schema a random model cannot wander off: the output must parse and match it."""
    for stream in (False, True):
        kw = dict(model="tiny", messages=MESSAGES, max_tokens=60, temperature=0, response_format={
            "type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}})
        if stream:
            text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**kw, stream=True)
                           if c.choices)
        else:
            text = client.chat.completions.create(**kw).choices[0].message.content
        obj = json.loads(text)
        assert obj["colour"] in ("red", "green", "blue") and isinstance(obj["bright"], bool)


def test_response_format_json_object(served, client):
    """json_object: any JSON object. The random model may not close it within max_tokens; what it wrote
    must still start an object, and parse whenever it stopped by itself."""
    out = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=30, temperature=0,
                                         response_format={"type": "json_object"}).choices[0]
    assert out.message.content.lstrip().startswith("{")
    if out.finish_reason == "stop":
        assert isinstance(json.loads(out.message.content), dict)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=MESSAGES, response_format={"type": "json_schema"})
