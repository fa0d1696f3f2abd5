"""Streamed responses: the engine streams of one HTTP response, merged into batches of increments.

The engine wakes the event loop once per burst of increments (engine/async_stream.py); a response takes
every increment delivered so far as one batch and writes it with one send, so a loop that falls behind
catches up at a lower cost per token instead of falling further behind. Also here: SGLang's
stream_interval (an SSE event every N tokens: the first token, then tokens 1 + kN, and the last; the
increments in between are merged) and the streaming metrics (TTFT, inter-token latency, tokens).
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from jaxsgl.server.generation import GenItem, call_engine, request_failure, until_disconnect
from jaxsgl.server.metrics import Metrics
from jaxsgl.server.state import ServerState

Batch = list[tuple[int, dict[str, Any]]]  # (choice index, increment)


class _Choice:
    """One engine stream of a response: its metrics clock, stream_interval hold-back and end state."""

    __slots__ = ("metrics", "interval", "last_t", "last_n", "sent_n", "held", "meta", "finished")

    def __init__(self, metrics: Metrics | None, interval: int, t0: float) -> None:
        self.metrics, self.interval = metrics, max(int(interval), 1)
        self.last_t, self.last_n, self.sent_n = t0, 0, 0
        self.held: dict[str, Any] | None = None  # increments merged while waiting for the next due token
        self.meta: dict[str, Any] | None = None
        self.finished = False

    def take(self, inc: dict[str, Any], now: float) -> dict[str, Any] | None:
        """Observe one increment; returns what to send now (None: held back by stream_interval)."""
        meta = inc["meta_info"]
        n = meta["completion_tokens"]
        if self.metrics is not None and n > self.last_n:
            self.metrics.observe_stream_step(self.last_n == 0, now - self.last_t, n - self.last_n)
            self.last_t, self.last_n = now, n
        self.meta = meta
        self.finished = meta.get("finish_reason") is not None
        if self.held is not None:  # the text since the last event; the rest is cumulative already
            inc, self.held = {**inc, "text": self.held["text"] + inc["text"]}, None
        k = self.interval
        if k > 1 and not self.finished and (n - 1) // k == (self.sent_n - 1) // k:
            self.held = inc  # SGLang sends tokens 1, 1 + k, 1 + 2k, ... (and the last)
            return None
        self.sent_n = n
        return inc


class Streams:
    """The engine streams of one streamed response. `async for batch in streams` gives non-empty lists of
    (choice index, increment): every increment delivered so far, in arrival order. aclose() aborts every
    stream that has not finished (also one never iterated) and records the requests' metrics."""

    def __init__(self, state: ServerState, streams: list[Any], choices: list[_Choice], first: Batch,
                 rids: list[str], log_metrics: bool) -> None:
        self.state, self.streams, self.choices, self.rids = state, streams, choices, rids
        self.log_metrics = log_metrics
        self._first = first
        self._gen: AsyncIterator[Batch] | None = None
        self._closed = False

    def __aiter__(self) -> AsyncIterator[Batch]:
        self._gen = self._batches()
        return self._gen

    async def _batches(self) -> AsyncIterator[Batch]:
        if self._first:
            yield self._first
        if len(self.streams) == 1:  # no tasks: read the engine stream directly
            it, c = self.streams[0], self.choices[0]
            take = c.take
            while True:
                try:
                    incs = await it.batch()
                except StopAsyncIteration:
                    return
                except Exception:
                    if c.held is not None:  # what was held back, before the error
                        yield [(0, c.held)]
                        c.held = None
                    raise
                now = time.perf_counter()
                batch = [(0, out) for out in [take(x, now) for x in incs] if out is not None]
                if batch:
                    yield batch
        queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

        async def pump(i: int, it: Any) -> None:
            try:
                async for inc in it:
                    queue.put_nowait((i, inc))
                    for x in it.ready():
                        queue.put_nowait((i, x))
            except Exception as e:  # noqa: BLE001 - re-raised by the consumer
                queue.put_nowait((i, e))
            finally:
                queue.put_nowait((i, None))

        tasks = [asyncio.ensure_future(pump(i, it)) for i, it in enumerate(self.streams)]
        try:
            remaining = len(tasks)
            while remaining:
                got = [await queue.get()]
                while not queue.empty():
                    got.append(queue.get_nowait())
                now, batch = time.perf_counter(), []
                for i, inc in got:
                    if inc is None:
                        remaining -= 1
                    elif isinstance(inc, BaseException):
                        if batch:
                            yield batch
                        raise inc
                    else:
                        out = self.choices[i].take(inc, now)
                        if out is not None:
                            batch.append((i, out))
                if batch:
                    yield batch
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._gen is not None:
                await self._gen.aclose()  # type: ignore[attr-defined]
        finally:  # (nothing below waits: it runs also in a cancelled task)
            engine = self.state.engine
            for rid, c in zip(self.rids, self.choices):
                if not c.finished and engine is not None:
                    engine.abort(rid)
            for s in self.streams:
                await s.aclose()
            if self.log_metrics:
                for c in self.choices:
                    if c.meta is not None:
                        meta = c.meta if c.finished else {**c.meta, "finish_reason": {"type": "abort"}}
                        self.state.metrics.observe_finished(meta, streamed=True)
            self.state.untrack(self.rids)


async def open_streams(state: ServerState, request: Request | None, items: list[GenItem],
                       log_metrics: bool = True) -> Streams:
    """Start one engine stream per (item, sample) and wait for each one's first increment, so that
    errors (bad input, a constraint that does not compile) are an HTTP status, not an in-band event.

    Returns the Streams (iterate batches of (choice index, increment); aclose() when done). Raises
    APIError or ClientDisconnected (every stream aborted).
    """
    singles = [s for it in items for s in it.split()]
    rids = [s.rid for s in singles]
    default = state.config.stream_interval
    metrics = state.metrics if log_metrics else None
    state.track(rids)
    streams: list[Any] = []
    t0 = time.perf_counter()
    choices = [_Choice(metrics, s.stream_interval or default, t0) for s in singles]
    first: Batch = []
    try:
        for s in singles:
            streams.append(await call_engine(state, [s], stream=True))
        for i, st in enumerate(streams):
            try:
                inc = await until_disconnect(request, st.__anext__())
            except (ValueError, RuntimeError) as e:
                raise request_failure(e) from None
            now = time.perf_counter()
            for x in [inc, *st.ready()]:
                out = choices[i].take(x, now)
                if out is not None:
                    first.append((i, out))
    except BaseException:
        engine = state.engine
        for rid in rids[:len(streams)]:
            if engine is not None:
                engine.abort(rid)
        for st in streams:
            await st.aclose()
        state.untrack(rids)
        raise
    return Streams(state, streams, choices, first, rids, log_metrics)
