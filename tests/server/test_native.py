"""SGLang's native API over HTTP: /generate (single, batch, n, stream, logprobs, rid/abort) and the
info/health/cache/tokenizer endpoints; greedy text equals Engine.generate; streamed equals non-streamed."""
from __future__ import annotations

import json
import threading
import time

import httpx
from harness import assert_no_leaked_pages, wait_idle

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Once upon a time, in a land far away,",
           "def fibonacci(n):", "Paris is the capital of"]
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
TIMEOUT = 120


def post(served, path: str, body, **kw) -> httpx.Response:
    return httpx.post(served.url + path, json=body, timeout=TIMEOUT, **kw)


def sse_events(resp: httpx.Response) -> list:
    out = []
    for line in resp.iter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_generate_single_and_batch_equal_engine_generate(served):
    ref = served.engine.generate(PROMPTS, GREEDY)
    one = post(served, "/generate", {"text": PROMPTS[0], "sampling_params": GREEDY}).json()
    assert one["text"] == ref[0]["text"] and one["output_ids"] == ref[0]["output_ids"]
    meta = one["meta_info"]
    assert {"id", "prompt_tokens", "completion_tokens", "cached_tokens", "finish_reason", "e2e_latency"} <= set(meta)
    assert meta["completion_tokens"] == 12 and meta["finish_reason"] == {"type": "length", "length": 12}
    batch = post(served, "/generate", {"text": PROMPTS, "sampling_params": GREEDY}).json()
    assert [b["text"] for b in batch] == [r["text"] for r in ref]
    ids = post(served, "/generate", {"input_ids": [served.engine.tokenizer.encode(p) for p in PROMPTS],
                                     "sampling_params": GREEDY}).json()
    assert [b["output_ids"] for b in ids] == [r["output_ids"] for r in ref]


def test_streamed_equals_non_streamed(served):
    for prompt in PROMPTS[:2]:
        whole = post(served, "/generate", {"text": prompt, "sampling_params": GREEDY}).json()
        with httpx.stream("POST", served.url + "/generate", json={"text": prompt, "sampling_params": GREEDY,
                                                                   "stream": True}, timeout=TIMEOUT) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
        assert events[-1] == "[DONE]" and len(events) > 2
        texts = [e["text"] for e in events[:-1]]
        assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), "text must be cumulative"
        assert texts[-1] == whole["text"]
        assert events[-2]["output_ids"] == whole["output_ids"]
        assert events[-2]["meta_info"]["finish_reason"] == whole["meta_info"]["finish_reason"]


def test_batch_stream_has_indices(served):
    with httpx.stream("POST", served.url + "/generate", json={"text": PROMPTS[:2], "sampling_params": GREEDY,
                                                               "stream": True}, timeout=TIMEOUT) as r:
        events = sse_events(r)[:-1]
    ref = served.engine.generate(PROMPTS[:2], GREEDY)
    for i in range(2):
        mine = [e for e in events if e["index"] == i]
        assert mine[-1]["text"] == ref[i]["text"]


def test_n_samples_and_seed(served):
    sp = {"max_new_tokens": 8, "temperature": 1.0, "seed": 7, "n": 3, "ignore_eos": True}
    out = post(served, "/generate", {"text": PROMPTS[1], "sampling_params": sp}).json()
    assert isinstance(out, list) and len(out) == 3
    again = post(served, "/generate", {"text": PROMPTS[1], "sampling_params": {**sp, "sampling_seed": 7,
                                                                                 "seed": None}}).json()
    assert [o["output_ids"] for o in out] == [o["output_ids"] for o in again]


def test_logprobs_with_text_and_top(served):
    body = {"text": PROMPTS[0], "sampling_params": {**GREEDY, "max_new_tokens": 4}, "return_logprob": True,
            "logprob_start_len": 2, "top_logprobs_num": 3, "return_text_in_logprobs": True}
    meta = post(served, "/generate", body).json()["meta_info"]
    prompt_len = meta["prompt_tokens"]
    assert len(meta["input_token_logprobs"]) == prompt_len - 2
    out = meta["output_token_logprobs"]
    assert len(out) == 4 and all(isinstance(t, str) for _, _, t in out)
    assert all(len(top) == 3 for top in meta["output_top_logprobs"])
    tok = served.engine.tokenizer
    assert out[0][2] == tok.decode([out[0][1]])
    # greedy: the chosen token is the top-1
    assert [e[1] for e in out] == [top[0][1] for top in meta["output_top_logprobs"]]


def test_select_style_max_new_tokens_zero_batch(served):
    """What sgl.RuntimeEndpoint.select sends: a batch, max_new_tokens 0, input logprobs with text."""
    body = {"text": [PROMPTS[3] + c for c in (" France", " Germany")],
            "sampling_params": {"max_new_tokens": 0, "temperature": 0}, "return_logprob": True,
            "return_text_in_logprobs": True, "logprob_start_len": 3}
    out = post(served, "/generate", body).json()
    assert len(out) == 2 and all(o["output_ids"] == [] for o in out)
    assert all(o["meta_info"]["input_token_logprobs"][0][2] for o in out)


def test_rid_and_abort_request(served):
    body = {"text": PROMPTS[2], "rid": "abort-me", "sampling_params": {"max_new_tokens": 400, "temperature": 0,
                                                                       "ignore_eos": True}}
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(post(served, "/generate", body).json()))
    t.start()
    deadline = time.monotonic() + 60
    while served.engine.get_load()["num_running_reqs"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert post(served, "/abort_request", {"rid": "abort-me"}).status_code == 200
    t.join(60)
    assert result["meta_info"]["id"] == "abort-me"
    assert result["meta_info"]["finish_reason"]["type"] == "abort"
    assert result["meta_info"]["completion_tokens"] < 400
    assert_no_leaked_pages(served.engine)


def test_info_endpoints(served):
    info = httpx.get(served.url + "/get_model_info", timeout=10).json()
    assert info["model_path"] and info["is_generation"] is True and "tokenizer_path" in info
    assert httpx.get(served.url + "/model_info", timeout=10).json() == info
    server = httpx.get(served.url + "/get_server_info", timeout=10).json()
    assert isinstance(server["internal_states"], list) and server["internal_states"]
    assert "num_running_reqs" in server["internal_states"][0] and server["version"]
    assert httpx.get(served.url + "/server_info", timeout=10).json()["served_model_name"] == "tiny"
    assert httpx.get(served.url + "/health", timeout=10).status_code == 200
    assert httpx.get(served.url + "/health_generate", timeout=60).status_code == 200
    models = httpx.get(served.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list" and models["data"][0]["id"] == "tiny"


def test_tokenize_detokenize(served):
    tok = served.engine.tokenizer
    out = post(served, "/tokenize", {"prompt": PROMPTS[0]}).json()
    assert out["tokens"] == tok.encode(PROMPTS[0]) and out["count"] == len(out["tokens"])
    assert out["max_model_len"] == served.engine.context_len
    many = post(served, "/tokenize", {"prompt": PROMPTS[:2]}).json()
    assert many["count"] == [len(tok.encode(p)) for p in PROMPTS[:2]]
    chat = post(served, "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["count"] > 3
    assert post(served, "/detokenize", {"tokens": out["tokens"]}).json()["text"] == PROMPTS[0]
    assert post(served, "/detokenize", {"tokens": [out["tokens"]]}).json()["text"] == [PROMPTS[0]]


def test_flush_cache_and_metrics(served):
    post(served, "/generate", {"text": PROMPTS[0], "sampling_params": GREEDY})
    r = post(served, "/flush_cache", None)
    assert r.status_code == 200 and "Cache flushed" in r.text
    assert_no_leaked_pages(served.engine)
    # streamed requests feed the latency histograms
    with httpx.stream("POST", served.url + "/generate", json={"text": PROMPTS[1], "sampling_params": GREEDY,
                                                               "stream": True}, timeout=TIMEOUT) as resp:
        sse_events(resp)
    text = httpx.get(served.url + "/metrics", timeout=10).text
    for name in ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage", "sglang:cache_hit_rate",
                 "sglang:gen_throughput", "sglang:prompt_tokens_total", "sglang:generation_tokens_total",
                 "sglang:cached_tokens_total", "sglang:time_to_first_token_seconds_bucket",
                 "sglang:inter_token_latency_seconds_bucket", "sglang:e2e_request_latency_seconds_bucket"):
        assert name in text, name
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["sglang:generation_tokens_total"] >= 24
    assert values["sglang:time_to_first_token_seconds_count"] >= 1
    assert values["sglang:inter_token_latency_seconds_count"] >= 11
    wait_idle(served.engine)


def test_constraint_params_pass_through(served):
    out = post(served, "/generate", {"text": "Answer yes or no:", "sampling_params": {
        "max_new_tokens": 4, "temperature": 0, "regex": "(yes|no)"}})
    assert out.status_code == 200 and out.json()["text"] in ("yes", "no")


def test_meta_info_timing_fields(served):
    """SGLang's per-request timing fields (0.5.x, srt/observability/req_time_stats.py): first_token_latency,
    request_received_ts / request_finished_ts (epoch seconds), decode_throughput, e2e_latency."""
    t0 = time.time()
    meta = post(served, "/generate", {"text": PROMPTS[0], "sampling_params": GREEDY}).json()["meta_info"]
    t1 = time.time()
    assert 0 < meta["first_token_latency"] <= meta["e2e_latency"]
    assert t0 - 0.01 <= meta["request_received_ts"] <= meta["request_finished_ts"] <= t1 + 0.01
    assert abs(meta["request_finished_ts"] - meta["request_received_ts"] - meta["e2e_latency"]) < 1e-3
    decode_s = meta["e2e_latency"] - meta["first_token_latency"]
    assert abs(meta["decode_throughput"] - 11 / decode_s) < 1e-6 * meta["decode_throughput"]
    assert meta["num_retractions"] == 0
    with httpx.stream("POST", served.url + "/generate", json={"text": PROMPTS[1], "sampling_params": GREEDY,
                                                               "stream": True}, timeout=TIMEOUT) as r:
        events = sse_events(r)[:-1]
    firsts = {e["meta_info"]["first_token_latency"] for e in events}
    assert len(firsts) == 1 and 0 < firsts.pop() <= events[-1]["meta_info"]["e2e_latency"]
    assert "request_finished_ts" in events[-1]["meta_info"] and "request_finished_ts" not in events[0]["meta_info"]


def test_gen_throughput_is_the_engines(served):
    """sglang:gen_throughput comes from the engine's own token count (get_load), not the server's guess:
    it moves for requests the server never saw (Engine.generate in-process) too."""
    def scrape() -> float:
        for line in httpx.get(served.url + "/metrics", timeout=10).text.splitlines():
            if line.startswith("sglang:gen_throughput"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError("no sglang:gen_throughput")

    wait_idle(served.engine)
    before = served.engine.get_load()["num_generated_tokens"]
    served.engine.generate(PROMPTS, GREEDY)  # not through the server
    load = served.engine.get_load()
    assert load["num_generated_tokens"] - before == 4 * 12
    assert load["gen_throughput"] > 0 and scrape() > 0
    info = httpx.get(served.url + "/get_server_info", timeout=10).json()["internal_states"][0]
    assert info["last_gen_throughput"] > 0
