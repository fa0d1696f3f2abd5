"""The server over an EngineProcess (`--engine-process`: the engine in a child process): the same answers as
the in-process engine, streams, errors, disconnects that free every page, and a clean exit."""
from __future__ import annotations

import json
import time

import httpx
import pytest
from harness import ENGINE_OPTS, InProcessServer

from jaxsgl.engine.engine_process import EngineProcess
from jaxsgl.server.launch import build_parser, config_from_args

TIMEOUT = 120
GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def remote(tiny_model):
    eng = EngineProcess(str(tiny_model), **ENGINE_OPTS)
    srv = InProcessServer(eng, model_path=str(tiny_model), served_model_name="tiny").start()
    yield srv
    srv.stop()
    eng.shutdown()
    assert eng._proc.returncode == 0


def _gen(url: str, body: dict) -> dict:
    r = httpx.post(url + "/generate", json=body, timeout=TIMEOUT)
    assert r.status_code == 200, r.text
    return r.json()


def _stream_text(url: str, body: dict) -> tuple[str, dict]:
    text, meta = "", {}
    with httpx.stream("POST", url + "/generate", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                ev = json.loads(line[5:])
                text, meta = ev["text"], ev["meta_info"]  # cumulative
    return text, meta


def test_answers_equal_the_in_process_engine(served, remote):
    prompts = ["The capital of France is", "def fib(n):", "Once upon a time"]
    for p in prompts:
        want = _gen(served.url, {"text": p, "sampling_params": GREEDY})
        got = _gen(remote.url, {"text": p, "sampling_params": GREEDY})
        assert (got["text"], got["output_ids"]) == (want["text"], want["output_ids"])
        assert got["meta_info"]["completion_tokens"] == 12 and got["meta_info"]["finish_reason"]["type"] == "length"
        text, meta = _stream_text(remote.url, {"text": p, "sampling_params": GREEDY})
        assert text == want["text"] and meta["finish_reason"]["type"] == "length"
    batch = _gen(remote.url, {"text": prompts, "sampling_params": GREEDY})
    assert [b["text"] for b in batch] == [_gen(served.url, {"text": p, "sampling_params": GREEDY})["text"]
                                          for p in prompts]
    r = httpx.post(remote.url + "/v1/completions", json={"model": "tiny", "prompt": prompts[0], "max_tokens": 12,
                                                         "temperature": 0}, timeout=TIMEOUT)
    assert r.status_code == 200 and r.json()["choices"][0]["text"]


def test_bad_input_is_400_and_the_child_keeps_serving(remote):
    r = httpx.post(remote.url + "/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 10**6}},
                   timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    r = httpx.post(remote.url + "/generate", json={"text": "x", "sampling_params": {**GREEDY, "regex": "(unclosed"}},
                   timeout=TIMEOUT)
    assert r.status_code == 400, r.text
    assert _gen(remote.url, {"text": "still here", "sampling_params": GREEDY})["meta_info"]["completion_tokens"] == 12


def test_disconnected_stream_is_aborted_and_frees_its_pages(remote):
    engine = remote.engine
    body = {"text": "A long story:", "stream": True, "sampling_params": {**GREEDY, "max_new_tokens": 400}}
    with httpx.stream("POST", remote.url + "/generate", json=body, timeout=TIMEOUT) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    deadline = time.monotonic() + 30
    while engine.get_load()["num_running_reqs"] and time.monotonic() < deadline:
        time.sleep(0.05)
    load = engine.get_load()
    assert load["num_running_reqs"] == 0 and load["num_generated_tokens"] > 0
    engine.flush_cache()
    deadline = time.monotonic() + 30
    while engine.get_load()["num_used_tokens"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.get_load()["num_used_tokens"] == 0  # every page back (integrity checked each step there)
    m = httpx.get(remote.url + "/metrics", timeout=TIMEOUT).text
    assert "sglang:num_running_reqs" in m and "sglang:num_aborted_requests_total" in m


def test_the_childs_step_trace_and_request_records_come_back(remote):
    """experiments/fidelity.py --engine-process reads the child's traces: the records of a request made here
    (its arrival is when the child took it, on the perf_counter clock both processes share) and its steps."""
    engine = remote.engine
    before = max((s["step"] for s in engine.trace()), default=-1)
    t_sent = time.perf_counter()
    out = _gen(remote.url, {"text": "Records, please:", "rid": "records-1", "sampling_params": GREEDY})
    assert out["meta_info"]["completion_tokens"] == 12
    assert engine.wait_idle(timeout=30.0)  # with overlap, a step was still in flight when the request returned
    steps = engine.trace(before + 1)
    assert steps and all(s["step"] > before for s in steps)
    assert all(s["step_time"] > 0 and s["prepare_time"] is not None for s in steps)
    rec = {r["rid"]: r for r in engine.request_records(t0=0.0)}["records-1"]
    assert rec["output_tokens"] == 12 and rec["admit_step"] > before
    assert t_sent <= rec["arrival_time"] <= rec["first_token_time"] <= rec["finish_time"] <= time.perf_counter()
    assert engine.get_server_info()["compiled_step_variants"] > 0


def test_a_failed_start_raises_here():
    with pytest.raises(Exception, match="no-such-model"):
        EngineProcess("/no-such-model", dtype="float32")


def test_engine_process_flag():
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).engine_process is True  # SGLang's layout by default
    assert config_from_args(parser.parse_args(["--engine-process"])).engine_process is True
    assert config_from_args(parser.parse_args(["--no-engine-process"])).engine_process is False


def test_a_dead_engine_process_fails_requests_with_503(tiny_model):
    """The child dies mid-serve: requests in flight and new ones fail (503, engine shut down); nothing hangs."""
    import asyncio

    eng = EngineProcess(str(tiny_model), **ENGINE_OPTS)
    srv = InProcessServer(eng, model_path=str(tiny_model), served_model_name="tiny").start()
    try:
        assert _gen(srv.url, {"text": "hi", "sampling_params": GREEDY})["meta_info"]["completion_tokens"] == 12
        eng._proc.kill()
        eng._proc.wait(timeout=30)
        r = httpx.post(srv.url + "/generate", json={"text": "hi", "sampling_params": GREEDY}, timeout=TIMEOUT)
        assert r.status_code == 503, r.text
        with pytest.raises(RuntimeError, match="shut down"):
            asyncio.run(eng.async_generate("hi", GREEDY))
        eng.abort("nobody")  # no error either
    finally:
        srv.stop()
        eng.shutdown()
