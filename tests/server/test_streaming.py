"""Streaming internals: the incremental SSE encoding equals the plain one, stream_interval (SGLang's
--stream-interval and sampling_params.stream_interval), and the engine->event-loop bridge waking the
loop once per burst of increments."""
from __future__ import annotations

import asyncio
import json
import threading
import time
import types

import httpx
import pytest

from jaxsgl.engine.async_stream import AsyncStream, LoopBridge
from jaxsgl.engine.request_state import _DONE
from jaxsgl.server.formatting import NativeStreamEvents, dumps, native_meta, native_result, sse
from jaxsgl.server.launch import build_parser, config_from_args
from jaxsgl.server.streaming import _Choice

GREEDY = {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True}
TIMEOUT = 120


def test_dumps_is_json_dumps():
    for obj in [{"a": "é\u2028\x00\"\\", "b": [1, -2.5, 1e300, float("nan"), None, True], "c": {}}, "x", 0.1, [],
                {"nested": {"k": [{"z": 10 ** 30}]}}]:
        assert dumps(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    with pytest.raises(TypeError):
        dumps({"x": object()})


@pytest.mark.parametrize("index", [None, 3])
def test_native_events_equal_sse_of_native_result(index):
    pieces = ["Hel", "lo \"wörld\"", "", "\n\t\\", "🦊", " \u2028end"]
    ev, text = NativeStreamEvents(index), ""
    for k, piece in enumerate(pieces, 1):
        text += piece
        meta = {"id": "r1", "completion_tokens": k, "finish_reason": None if k < len(pieces) else {"type": "length"},
                "e2e_latency": 0.1 * k}
        inc = {"text": piece, "output_ids": list(range(100, 100 + k)), "meta_info": meta}
        want = native_result(inc, None, False, 0, text=text)
        if index is not None:
            want["index"] = index
        assert ev.event(inc, native_meta(meta, None, False, 0)) == sse(want)
    # ids rewritten (never expected): still the plain encoding
    inc = {"text": "", "output_ids": [7, 8], "meta_info": {"completion_tokens": 2}}
    want = native_result(inc, None, False, 0, text=text)
    if index is not None:
        want["index"] = index
    assert ev.event(inc, inc["meta_info"]) == sse(want)


def test_native_meta_trims_like_native_result():
    meta = {"output_token_logprobs": [(-0.5, 5, None)], "output_top_logprobs": [[(-0.5, 5, None), (-1.0, 6, None)]],
            "input_token_logprobs": [], "input_top_logprobs": []}
    inc = {"text": "", "output_ids": [5], "meta_info": meta}
    assert native_meta(meta, None, True, 1) == native_result(inc, None, True, 1)["meta_info"]
    plain = {"completion_tokens": 1}
    assert native_meta(plain, None, True, 1) is plain


def _incs(n: int) -> list[dict]:
    return [{"text": f"t{k}", "output_ids": list(range(k)), "meta_info": {
        "completion_tokens": k, "finish_reason": None if k < n else {"type": "length"}}} for k in range(1, n + 1)]


@pytest.mark.parametrize("interval,sent", [(1, list(range(1, 11))), (4, [1, 5, 9, 10]), (3, [1, 4, 7, 10]),
                                           (20, [1, 10])])
def test_stream_interval_sends_first_then_every_nth_and_last(interval, sent):
    c = _Choice(None, interval, 0.0)
    out = [x for x in (c.take(inc, 1.0) for inc in _incs(10)) if x is not None]
    assert [x["meta_info"]["completion_tokens"] for x in out] == sent
    assert "".join(x["text"] for x in out) == "".join(f"t{k}" for k in range(1, 11))
    assert out[-1]["output_ids"] == list(range(10)) and c.finished


def test_stream_interval_counts_tokens_not_events():
    """Tokens without new text send no increment: the next one after a due token is sent."""
    c = _Choice(None, 4, 0.0)
    incs = [inc for inc in _incs(12) if inc["meta_info"]["completion_tokens"] not in (5, 6)]
    out = [x["meta_info"]["completion_tokens"] for x in (c.take(inc, 1.0) for inc in incs) if x is not None]
    assert out == [1, 7, 9, 12]


def test_bridge_wakes_the_loop_once_per_burst():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bridge, wakes = LoopBridge(loop), []
        real = loop.call_soon_threadsafe
        loop.call_soon_threadsafe = lambda *a: (wakes.append(1), real(*a))  # type: ignore[method-assign]
        states = [types.SimpleNamespace(rid=f"r{i}", done=False, events=None, sink=None,
                                        raise_error=lambda: None) for i in range(3)]
        for st in states:
            bridge.attach(st)  # type: ignore[arg-type]
        streams = [AsyncStream(st, lambda st, ev: ev, lambda rid: None) for st in states]  # type: ignore[arg-type]

        def burst(k: int) -> None:
            for st in states:
                st.sink({"k": k})
                st.sink({"k": k + 1})

        t = threading.Thread(target=burst, args=(0,))
        t.start()
        t.join()
        assert len(wakes) == 1
        assert [await s.batch() for s in streams] == [[{"k": 0}, {"k": 1}]] * 3
        for st in states:
            st.done = True
            st.sink(_DONE)
        assert len(wakes) == 2
        for s in streams:
            assert s.ready() == []
            with pytest.raises(StopAsyncIteration):
                await s.__anext__()
        loop.call_soon_threadsafe = real  # type: ignore[method-assign]

    asyncio.run(main())


def test_stream_interval_flag():
    parser = build_parser()
    assert config_from_args(parser.parse_args([])).stream_interval == 1  # SGLang's default: every token
    assert config_from_args(parser.parse_args(["--stream-interval", "8"])).stream_interval == 8
    with pytest.raises(SystemExit):
        parser.parse_args(["--stream-interval", "0"])


def _stream(served, body: dict) -> list:
    with httpx.stream("POST", served.url + "/generate", json={**body, "stream": True}, timeout=TIMEOUT) as r:
        assert r.status_code == 200, r.read()
        return [json.loads(line[5:]) for line in r.iter_lines()
                if line.startswith("data:") and line.strip() != "data: [DONE]"]


def test_generate_stream_interval_per_request_and_server_default(served):
    prompt = "Once upon a time, in a land far away,"
    whole = httpx.post(served.url + "/generate", json={"text": prompt, "sampling_params": GREEDY},
                       timeout=TIMEOUT).json()
    every = _stream(served, {"text": prompt, "sampling_params": GREEDY})
    sparse = _stream(served, {"text": prompt, "sampling_params": {**GREEDY, "stream_interval": 5}})
    assert len(sparse) < len(every)
    assert sparse[0]["meta_info"]["completion_tokens"] == every[0]["meta_info"]["completion_tokens"]
    for events in (every, sparse):
        assert events[-1]["text"] == whole["text"] and events[-1]["output_ids"] == whole["output_ids"]
        assert events[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 12}
    served.state.config.stream_interval = 5
    try:
        default = _stream(served, {"text": prompt, "sampling_params": GREEDY})
        one = _stream(served, {"text": prompt, "sampling_params": {**GREEDY, "stream_interval": 1}})
    finally:
        served.state.config.stream_interval = 1
    counts = [e["meta_info"]["completion_tokens"] for e in default]
    assert counts == [e["meta_info"]["completion_tokens"] for e in sparse]
    assert len(one) == len(every) and one[-1]["text"] == whole["text"]


def test_openai_stream_with_server_stream_interval(served):
    body = {"model": "tiny", "prompt": "Paris is the capital of", "max_tokens": 12, "temperature": 0,
            "ignore_eos": True}
    whole = httpx.post(served.url + "/v1/completions", json=body, timeout=TIMEOUT).json()["choices"][0]["text"]
    served.state.config.stream_interval = 4
    try:
        with httpx.stream("POST", served.url + "/v1/completions", json={**body, "stream": True},
                          timeout=TIMEOUT) as r:
            chunks = [json.loads(line[5:]) for line in r.iter_lines()
                      if line.startswith("data:") and line.strip() != "data: [DONE]"]
    finally:
        served.state.config.stream_interval = 1
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole
    assert 2 <= len(chunks) <= 4 and chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_bad_stream_interval_is_400(served):
    r = httpx.post(served.url + "/generate", json={"text": "x", "stream": True,
                                                   "sampling_params": {"stream_interval": 0}}, timeout=TIMEOUT)
    assert r.status_code == 400 and "stream_interval" in r.text


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": ["Paris is the capital of", "def f(x):"], "max_tokens": 6}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "n": 2})])
def test_openai_chunks_are_compact_json_in_openais_key_order(served, path, body):
    body = {**body, "model": "tiny", "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", served.url + path, json=body, timeout=TIMEOUT) as r:
        lines = [line[6:] for line in r.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert len(lines) > 3
    for line in lines:
        obj = json.loads(line)
        assert line == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
        assert list(obj) == ["id", "object", "created", "model", "choices", "usage"]
        assert all(list(c)[:2] == ["index", "text" if "completions" == path[4:] else "delta"] for c in obj["choices"])
    assert {json.loads(x)["choices"][0]["index"] for x in lines[:-1]} == {0, 1}


def test_loop_metrics_scrape_like_prometheus_client():
    import re

    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from jaxsgl.server.metrics import ITL_BUCKETS, LoopCounter, LoopHistogram

    labels = {"model_name": "m"}
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    h, c = LoopHistogram("x:lat", "Latency.", ITL_BUCKETS, labels), LoopCounter("x:tok", "Tokens.", labels)
    ours.register(h)
    ours.register(c)
    ph = Histogram("x:lat", "Latency.", ["model_name"], buckets=ITL_BUCKETS, registry=theirs).labels(**labels)
    pc = Counter("x:tok", "Tokens.", ["model_name"], registry=theirs).labels(**labels)
    for v in [0.0, 0.002, 0.0021, 0.03, 0.3, 7.0, 1e9, 0.1]:
        h.observe(v)
        ph.observe(v)
    c.inc(3)
    pc.inc(3)
    c.inc()
    pc.inc()
    created = re.compile(r"(_created\{[^}]*\}) \S+")
    assert created.sub(r"\1 T", generate_latest(ours).decode()) == created.sub(r"\1 T", generate_latest(theirs).decode())


def test_async_stream_closed_or_dropped_early_aborts(served):
    import gc

    from harness import wait_idle

    eng = served.engine
    params = {"max_new_tokens": 300, "temperature": 0, "ignore_eos": True}

    async def main() -> None:
        it = await eng.async_generate("Hello there", params, stream=True, rid="stream-closed")
        assert (await it.__anext__())["meta_info"]["completion_tokens"] >= 1
        await it.aclose()
        dropped = await eng.async_generate("Hello there", params, stream=True, rid="stream-dropped")
        await dropped.__anext__()
        del dropped
        gc.collect()

    asyncio.run(main())
    wait_idle(eng)
    records = {r["rid"]: r for r in eng.request_records()}
    for rid in ("stream-closed", "stream-dropped"):
        assert records[rid]["finish_reason"] == "abort" and records[rid]["output_tokens"] < 300


def test_serving_benchmark_reads_server_cpu_per_token():
    import os
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from serving import cpu_per_token, server_cpu

    before = server_cpu(os.getpid())
    if before is None:
        pytest.skip("no /proc")
    t = time.thread_time()
    while time.thread_time() - t < 0.05:  # 50 ms of CPU: 50 us per token of 1000
        pass
    rec = cpu_per_token(before, server_cpu(os.getpid()), 1000)
    assert rec["server_process_cpu_us_per_token"] >= 30 and rec["server_loop_cpu_us_per_token"] >= 0
    assert cpu_per_token(before, None, 1000) == {} and cpu_per_token(before, before, 0) == {}
