"""The asyncio side of Engine.async_generate: one event-loop wake-up per burst of increments, and streams.

The loop thread emits each request's increments (RequestState.push_increment) one request at a time.
A LoopBridge collects them and wakes the caller's event loop once per burst (one step's worth, typically)
instead of once per increment: call_soon_threadsafe writes to the loop's self-pipe, a syscall that
also hands the GIL to the event loop mid-step. AsyncStream is the iterator of one streamed request;
`ready()` returns the increments already delivered without waiting, so a server can write them in one go.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from jaxsgl.engine.request_state import _DONE, RequestState


class Channel:
    """asyncio.Queue's put_nowait / get / get_nowait / empty for one reader on the event loop, cheaper
    (a request's increments: the loop thread puts them through a LoopBridge, one task reads them)."""

    __slots__ = ("_items", "_waiter", "_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future | None = None
        self._loop = loop

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = self._loop.create_future()
            await self._waiter
        return self._items.popleft()

    def get_nowait(self) -> Any:
        """The next item (raises IndexError when empty)."""
        return self._items.popleft()

    def empty(self) -> bool:
        return not self._items


class LoopBridge:
    """Delivers events to Channels of one event loop; thread-safe, one wake-up per burst."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._pending: list[tuple[Channel, Any]] = []
        self._lock = threading.Lock()

    def attach(self, st: RequestState) -> None:
        """Route st's events to a new Channel (st.events) on this loop; call before submitting."""
        q = Channel(self.loop)
        st.events = q  # type: ignore[assignment]
        st.sink = lambda ev: self._put(q, ev)

    def _put(self, q: Channel, ev: Any) -> None:
        with self._lock:
            self._pending.append((q, ev))
            if len(self._pending) > 1:
                return  # a wake-up is already scheduled
        try:
            self.loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed: nobody is left to read these events
            with self._lock:
                self._pending.clear()

    def _drain(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for q, ev in batch:
            q.put_nowait(ev)


class AsyncStream:
    """Engine.async_generate(stream=True): one request's increments (`async for`). Closing it (or
    dropping it) before the end aborts the request; a failed request raises at the end of the stream.
    `st` is a RequestState, or anything with its rid, done, events (after LoopBridge.attach) and
    raise_error() (EngineProcess's requests)."""

    def __init__(self, st: Any, with_times: Callable[[Any, dict], dict],
                 abort: Callable[[str], None]) -> None:
        self._st, self._with_times, self._abort = st, with_times, abort
        self._ended = False  # the end marker was read (by ready() or __anext__)
        self._closed = False  # StopAsyncIteration raised or aclose() called

    def __aiter__(self) -> "AsyncStream":
        return self

    async def __anext__(self) -> dict[str, Any]:
        if not self._ended and not self._closed:
            ev = await self._st.events.get()  # type: ignore[misc]
            if ev is not _DONE:
                return self._with_times(self._st, ev)
            self._ended = True
        if not self._closed:
            self._closed = True
            self._st.raise_error()
        raise StopAsyncIteration

    def ready(self) -> list[dict[str, Any]]:
        """The increments delivered so far and not yet read, without waiting (maybe none)."""
        out: list[dict[str, Any]] = []
        q, st = self._st.events, self._st
        while not self._ended and not q.empty():  # type: ignore[attr-defined]
            ev = q.get_nowait()  # type: ignore[attr-defined]
            if ev is _DONE:
                self._ended = True
            else:
                out.append(self._with_times(st, ev))
        return out

    async def batch(self) -> list[dict[str, Any]]:
        """The next increment and every other one already delivered (raises StopAsyncIteration at the end)."""
        first = await self.__anext__()
        return [first, *self.ready()] if not self._st.events.empty() else [first]  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        self._closed = True
        if not self._st.done:
            self._abort(self._st.rid)

    def __del__(self) -> None:
        if not self._closed and not self._st.done:
            self._abort(self._st.rid)
