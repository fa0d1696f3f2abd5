"""Disconnects and load: many concurrent streaming clients, a third hanging up at random points.

Every disconnected request is aborted promptly, every page comes back, the process's memory returns to
its baseline, and no client that stayed lost a token. The issue asks for 500 clients; CI's 2 cores run
JAXSGL_SERVER_LOAD_CLIENTS (default 64): `JAXSGL_SERVER_LOAD_CLIENTS=500 pytest tests/server -k load`.
"""
from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import os
import random
import statistics
import time

import httpx
import psutil
from harness import assert_no_leaked_pages, wait_idle

NUM_CLIENTS = int(os.environ.get("JAXSGL_SERVER_LOAD_CLIENTS", "64"))
MAX_NEW = 16
SP = {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True}


def prompts(n: int) -> list[str]:
    topics = ["the sea", "mountains", "a city at night", "old books", "the moon", "rain", "trains", "bread"]
    return [f"Client {i} writes a short note about {topics[i % len(topics)]}:" for i in range(n)]


async def stream_client(client: httpx.AsyncClient, url: str, prompt: str, hang_up_after: int | None) -> str | None:
    """Stream /generate; return the final text, or None after hanging up following `hang_up_after` events."""
    text, events = None, 0
    async with client.stream("POST", url + "/generate", json={"text": prompt, "sampling_params": SP,
                                                              "stream": True}) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            text = json.loads(line[5:])["text"]
            events += 1
            if hang_up_after is not None and events >= hang_up_after:
                return None  # leaving the block closes the connection mid-stream
    return text


async def run_load(url: str, texts: list[str], seed: int) -> list[str | None]:
    rng = random.Random(seed)
    plan = [rng.randint(0, MAX_NEW // 2) if i % 3 == 0 else None for i in range(len(texts))]
    limits = httpx.Limits(max_connections=len(texts) + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(180, connect=30), limits=limits) as client:
        async def one(i: int) -> str | None:
            if plan[i] == 0:  # hang up before the first event
                try:
                    await asyncio.wait_for(stream_client(client, url, texts[i], None), rng.uniform(0.0, 0.3))
                except asyncio.TimeoutError:
                    return None
            return await stream_client(client, url, texts[i], plan[i])

        results = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(texts)))), 240)
    return [None if p is not None else r for p, r in zip(plan, results)]


def test_many_streaming_clients_with_disconnects(served):
    engine = served.engine
    texts = prompts(NUM_CLIENTS)
    ref = [r["text"] for r in engine.generate(texts, SP)]
    proc = psutil.Process()
    for seed in (0, 1):  # warm-up rounds: compile the batch shapes such a load meets
        asyncio.run(run_load(served.url, texts, seed=seed))
    assert_no_leaked_pages(engine)
    baseline = settled_rss(proc)
    t0 = time.perf_counter()
    results = asyncio.run(run_load(served.url, texts, seed=1))
    elapsed = time.perf_counter() - t0
    stayed = [(r, want) for r, want in zip(results, ref) if r is not None]
    assert len(stayed) >= NUM_CLIENTS * 2 // 3 - 1
    assert [r for r, _ in stayed] == [want for _, want in stayed], "a client that stayed lost tokens"
    wait_idle(engine, timeout=10)
    assert not served.state.inflight
    assert_no_leaked_pages(engine)
    rss = settled_rss(proc)
    print(f"{NUM_CLIENTS} clients in {elapsed:.1f}s; RSS {baseline / 2**20:.0f} -> {rss / 2**20:.0f} MiB")
    assert rss <= baseline * 1.05, f"RSS grew from {baseline / 2**20:.0f} to {rss / 2**20:.0f} MiB"


def settled_rss(proc: psutil.Process) -> int:
    """RSS after a GC and glibc's malloc_trim (freed heap handed back to the OS, where it can be)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    return proc.memory_info().rss


def _abort_latency(served, stream: bool) -> tuple[float, float]:
    """(seconds from hang-up until the engine has no running request, median step time)."""
    engine = served.engine
    wait_idle(engine)
    body = {"text": "A very long story begins:", "stream": stream,
            "sampling_params": {"max_new_tokens": 480, "temperature": 0, "ignore_eos": True}}
    gaps: list[float] = []
    if stream:
        with httpx.stream("POST", served.url + "/generate", json=body, timeout=60) as r:
            last = time.perf_counter()
            for n, line in enumerate(r.iter_lines()):
                if line.startswith("data:"):
                    now = time.perf_counter()
                    gaps.append(now - last)
                    last = now
                if len(gaps) >= 12:
                    break
    else:
        with httpx.Client(timeout=httpx.Timeout(0.5, connect=10)) as c:
            try:
                c.post(served.url + "/generate", json=body)
            except httpx.ReadTimeout:
                pass
        gaps = [0.0]
    hung_up = time.perf_counter()
    deadline = hung_up + 10
    while engine.get_load()["num_running_reqs"] and time.perf_counter() < deadline:
        time.sleep(0.001)
    return time.perf_counter() - hung_up, statistics.median(gaps[2:] or gaps)


def test_disconnect_aborts_promptly(served):
    # compile every shape a 400-token request passes through first: a step that compiles is a long step
    served.engine.generate("A very long story begins:", {"max_new_tokens": 480, "temperature": 0,
                                                         "ignore_eos": True})
    aborted = aborted_total(served)
    latency, step = _abort_latency(served, stream=True)
    print(f"streaming hang-up -> aborted in {latency * 1000:.1f} ms (median step {step * 1000:.1f} ms)")
    assert latency < max(3 * step, 0.5), (latency, step)
    latency, _ = _abort_latency(served, stream=False)
    print(f"non-streaming hang-up -> aborted in {latency * 1000:.1f} ms")
    assert latency < max(3 * step, 0.5), (latency, step)
    assert aborted_total(served) == aborted + 2
    assert_no_leaked_pages(served.engine)


def aborted_total(served) -> float:
    for line in httpx.get(served.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("sglang:num_aborted_requests_total"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
