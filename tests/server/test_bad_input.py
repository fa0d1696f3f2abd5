"""A corpus of malformed and hostile requests: each gets a 4xx with a clear OpenAI-shaped error, none a
5xx, none hangs; afterwards the server still answers correctly and no KV page leaked."""
from __future__ import annotations

import json

import httpx
import pytest
from harness import assert_no_leaked_pages

G, C, CH = "/generate", "/v1/completions", "/v1/chat/completions"
OK_MSG = [{"role": "user", "content": "hi"}]


def gen(**kw):
    return {"text": "Hello", "sampling_params": {"max_new_tokens": 4}, **kw}


def sp(**kw):
    return {"text": "Hello", "sampling_params": {"max_new_tokens": 4, **kw}}


def comp(**kw):
    return {"model": "tiny", "prompt": "Hello", "max_tokens": 4, **kw}


def chat(**kw):
    return {"model": "tiny", "messages": OK_MSG, "max_tokens": 4, **kw}


# (id, method, path, body: dict (JSON) | bytes (raw), expected status or None for any 4xx)
CORPUS = [
    ("bad-json", "POST", G, b'{"text": "a",', 400),
    ("empty-body", "POST", G, b"", 400),
    ("top-level-array", "POST", G, b"[1, 2]", 400),
    ("top-level-string", "POST", G, b'"hello"', 400),
    ("invalid-utf8", "POST", G, b'{"text": "\xff\xfe\xfd"}', 400),
    ("nan-temperature", "POST", G, b'{"text": "a", "sampling_params": {"temperature": NaN}}', 400),
    ("infinity-max-tokens", "POST", G, b'{"text": "a", "sampling_params": {"max_new_tokens": Infinity}}', 400),
    ("overflow-float", "POST", G, b'{"text": "a", "sampling_params": {"temperature": 1e999}}', 400),
    ("deep-nesting", "POST", G, b"[" * 100_000 + b"]" * 100_000, 400),
    ("no-input", "POST", G, {}, 400),
    ("text-and-ids", "POST", G, {"text": "a", "input_ids": [1, 2]}, 400),
    ("text-int", "POST", G, {"text": 123}, 400),
    ("text-list-mixed", "POST", G, {"text": ["a", 1]}, 400),
    ("ids-strings", "POST", G, {"input_ids": ["a", "b"]}, 400),
    ("ids-negative", "POST", G, {"input_ids": [-1, 5]}, 400),
    ("ids-out-of-vocab", "POST", G, {"input_ids": [10**9]}, 400),
    ("ids-empty", "POST", G, {"input_ids": []}, 400),
    ("ids-float", "POST", G, {"input_ids": [1.5]}, 400),
    ("text-empty", "POST", G, {"text": ""}, 400),
    ("text-batch-empty", "POST", G, {"text": []}, 400),
    ("sampling-not-object", "POST", G, {"text": "a", "sampling_params": "fast"}, 400),
    ("unknown-sampling-param", "POST", G, sp(foo=1), 400),
    ("unknown-field", "POST", G, gen(bogus=1), 400),
    ("max-new-negative", "POST", G, sp(max_new_tokens=-1), 400),
    ("max-new-huge", "POST", G, sp(max_new_tokens=10**12), 400),
    ("max-new-string", "POST", G, sp(max_new_tokens="10"), 400),
    ("max-new-float", "POST", G, sp(max_new_tokens=1.5), 400),
    ("temperature-negative", "POST", G, sp(temperature=-0.5), 400),
    ("temperature-string", "POST", G, sp(temperature="hot"), 400),
    ("top-p-2", "POST", G, sp(top_p=2), 400),
    ("top-p-0", "POST", G, sp(top_p=0), 400),
    ("top-k-string", "POST", G, sp(top_k="5"), 400),
    ("min-p-5", "POST", G, sp(min_p=5), 400),
    ("repetition-penalty-0", "POST", G, sp(repetition_penalty=0), 400),
    ("frequency-penalty-5", "POST", G, sp(frequency_penalty=5), 400),
    ("n-0", "POST", G, sp(n=0), 400),
    ("n-million", "POST", G, sp(n=10**6), 400),
    ("stop-empty-string", "POST", G, sp(stop=[""]), 400),
    ("stop-int", "POST", G, sp(stop=123), 400),
    ("stop-too-many", "POST", G, sp(stop=[f"s{i}" for i in range(100)]), 400),
    ("stop-token-ids-strings", "POST", G, sp(stop_token_ids=["x"]), 400),
    ("invalid-regex", "POST", G, sp(regex="("), 400),
    ("invalid-regex-stream", "POST", G, {**sp(regex="(["), "stream": True}, 400),
    ("invalid-json-schema", "POST", G, sp(json_schema="{not json"), 400),
    ("stop-regex-invalid", "POST", G, sp(stop_regex="("), 400),
    ("spaces-between-special-false", "POST", G, sp(spaces_between_special_tokens=False), 400),
    ("return-logprob-string", "POST", G, gen(return_logprob="yes"), 400),
    ("logprob-start-past-end", "POST", G, gen(return_logprob=True, logprob_start_len=1000), 400),
    ("logprob-start-negative", "POST", G, gen(return_logprob=True, logprob_start_len=-5), 400),
    ("top-logprobs-huge", "POST", G, gen(return_logprob=True, top_logprobs_num=10**6), 400),
    ("top-logprobs-negative", "POST", G, gen(return_logprob=True, top_logprobs_num=-1), 400),
    ("rid-list-mismatch", "POST", G, {"text": ["a", "b"], "rid": ["x"]}, 400),
    ("sampling-list-mismatch", "POST", G, {"text": ["a", "b"], "sampling_params": [{}]}, 400),
    ("duplicate-rids", "POST", G, {"text": ["a", "b"], "rid": ["same", "same"]}, 400),
    ("over-context", "POST", G, {"text": "word " * 2000, "sampling_params": {"max_new_tokens": 4}}, 400),
    ("stream-string", "POST", G, gen(stream="yes"), 400),
    ("lora-unsupported", "POST", G, gen(lora_path="adapter"), 400),
    ("image-unsupported", "POST", G, gen(image_data="aGVsbG8="), 400),
    ("get-generate", "GET", G, None, 405),
    ("unknown-path", "POST", "/no/such/route", {}, 404),
    ("c-unknown-model", "POST", C, comp(model="gpt-17"), 404),
    ("c-missing-model", "POST", C, {"prompt": "a"}, 400),
    ("c-missing-prompt", "POST", C, {"model": "tiny"}, 400),
    ("c-prompt-empty-list", "POST", C, comp(prompt=[]), 400),
    ("c-prompt-empty-ids", "POST", C, comp(prompt=[[]]), 400),
    ("c-prompt-empty-string", "POST", C, comp(prompt=""), 400),
    ("c-prompt-object", "POST", C, comp(prompt={"a": 1}), 400),
    ("c-prompt-mixed", "POST", C, comp(prompt=[1, "a"]), 400),
    ("c-max-tokens-negative", "POST", C, comp(max_tokens=-1), 400),
    ("c-max-tokens-huge", "POST", C, comp(max_tokens=10**9), 400),
    ("c-n-0", "POST", C, comp(n=0), 400),
    ("c-n-1000", "POST", C, comp(n=1000), 400),
    ("c-nan-temperature", "POST", C, b'{"model": "tiny", "prompt": "a", "temperature": NaN}', 400),
    ("c-temperature-3", "POST", C, comp(temperature=3), 400),
    ("c-top-p-2", "POST", C, comp(top_p=2), 400),
    ("c-logprobs-10", "POST", C, comp(logprobs=10), 400),
    ("c-echo-logprobs-stream", "POST", C, comp(echo=True, logprobs=1, stream=True), 400),
    ("c-best-of-3", "POST", C, comp(best_of=3), 400),
    ("c-logit-bias", "POST", C, comp(logit_bias={"1": 5.0}), 400),
    ("c-suffix", "POST", C, comp(suffix="x"), 400),
    ("c-stream-options-type", "POST", C, comp(stream=True, stream_options={"include_usage": "yes"}), 400),
    ("c-response-format-xml", "POST", C, comp(response_format={"type": "xml"}), 400),
    ("c-json-schema-missing", "POST", C, comp(response_format={"type": "json_schema"}), 400),
    ("c-json-schema-not-object", "POST", C,
     comp(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": "str"}}), 400),
    ("c-unknown-field", "POST", C, comp(foo="bar"), 400),
    ("c-stream-over-context", "POST", C, comp(prompt="word " * 2000, stream=True), 400),
    ("ch-messages-empty", "POST", CH, chat(messages=[]), 400),
    ("ch-messages-missing", "POST", CH, {"model": "tiny"}, 400),
    ("ch-messages-string", "POST", CH, chat(messages="hi"), 400),
    ("ch-role-wizard", "POST", CH, chat(messages=[{"role": "wizard", "content": "x"}]), 400),
    ("ch-content-int", "POST", CH, chat(messages=[{"role": "user", "content": 5}]), 400),
    ("ch-image-part", "POST", CH, chat(messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]), 400),
    ("ch-tools", "POST", CH, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400),
    ("ch-top-logprobs-without", "POST", CH, chat(top_logprobs=2), 400),
    ("ch-top-logprobs-50", "POST", CH, chat(logprobs=True, top_logprobs=50), 400),
    ("ch-max-completion-negative", "POST", CH, chat(max_completion_tokens=-3), 400),
    ("ch-frequency-penalty-3", "POST", CH, chat(frequency_penalty=3), 400),
    ("ch-seed-string", "POST", CH, chat(seed="abc"), 400),
    ("ch-unknown-model", "POST", CH, chat(model="nope"), 404),
    ("ch-bad-response-format", "POST", CH, chat(response_format={"type": "json_schema", "json_schema": {}}), 400),
    ("ch-over-context", "POST", CH, chat(messages=[{"role": "user", "content": "word " * 2000}]), 400),
    ("tokenize-nothing", "POST", "/tokenize", {}, 400),
    ("tokenize-int", "POST", "/tokenize", {"prompt": 5}, 400),
    ("detokenize-out-of-range", "POST", "/detokenize", {"tokens": [10**9]}, 400),
    ("detokenize-strings", "POST", "/detokenize", {"tokens": ["a"]}, 400),
    ("abort-empty", "POST", "/abort_request", {}, 400),
    ("abort-rid-int", "POST", "/abort_request", {"rid": 5}, 400),
]


def send(served, method: str, path: str, body) -> httpx.Response:
    kw = {"content": body} if isinstance(body, bytes) else {"json": body} if body is not None else {}
    return httpx.request(method, served.url + path, timeout=30, **kw)


def test_corpus_size():
    assert len(CORPUS) >= 60 and len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("case", CORPUS, ids=[c[0] for c in CORPUS])
def test_hostile_request_gets_a_clear_4xx(served, case):
    _, method, path, body, status = case
    r = send(served, method, path, body)
    assert 400 <= r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if status is not None:
        assert r.status_code == status, r.text[:300]
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and len(err["message"]) > 5, err


def test_oversized_body_is_413(served):
    limit = served.state.config.max_request_bytes
    r = httpx.post(served.url + G, content=b'{"text": "' + b"a" * (limit + 10) + b'"}', timeout=60)
    assert r.status_code == 413 and "exceeds" in r.json()["error"]["message"]


def test_chunked_oversized_body_is_413(served):
    limit = served.state.config.max_request_bytes

    def chunks():
        yield b'{"text": "'
        for _ in range(limit // (1 << 20) + 2):
            yield b"a" * (1 << 20)
        yield b'"}'

    r = httpx.post(served.url + G, content=chunks(), timeout=60)
    assert r.status_code == 413


def test_server_still_correct_and_no_pages_leaked(served):
    for case in CORPUS[:12]:  # a second pass of the transport-level cases, concurrently with real work
        send(served, *case[1:4])
    body = {"text": "The quick brown fox", "sampling_params": {"max_new_tokens": 8, "temperature": 0,
                                                               "ignore_eos": True}}
    ref = served.engine.generate(body["text"], body["sampling_params"])
    out = httpx.post(served.url + G, json=body, timeout=60).json()
    assert out["text"] == ref["text"]
    assert json.loads(httpx.get(served.url + "/health", timeout=10).text or "{}") == {}
    assert_no_leaked_pages(served.engine)
