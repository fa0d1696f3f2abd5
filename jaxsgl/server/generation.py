"""The async bridge from HTTP handlers to Engine.async_generate: batches, aborts, metrics (streams:
server/streaming.py).

No thread per request and no polling: the engine's loop thread wakes this event loop
(call_soon_threadsafe) once per burst of increments. A client that disconnects cancels the awaiting
task, which aborts its engine request(s) before the next step.
"""
from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request

from jaxsgl.engine.sampling_params import SamplingParams
from jaxsgl.server.errors import APIError, validate
from jaxsgl.server.protocol import SGLSamplingParams
from jaxsgl.server.state import ServerState

T = TypeVar("T")
ENGINE_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}
# SGLang sampling names the engine may not know yet: dropped at these (neutral) values
NEUTRAL = {"min_new_tokens": (0,), "json_schema": (), "regex": (), "ebnf": (), "stop_regex": ([], "")}
SERVER_SAMPLING_FIELDS = {"stream_interval"}  # applied by the server (streaming.py), not passed to the engine


class ClientDisconnected(Exception):
    """The client went away before the answer was ready (its requests were aborted)."""


@dataclass
class GenItem:
    """One prompt of a generate call, in the engine's terms."""

    text: str | None = None
    input_ids: list[int] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    return_logprob: bool = False
    logprob_start_len: int | None = None
    top_logprobs_num: int = 0
    priority: int = 0
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)
    stream_interval: int | None = None  # None: the server's --stream-interval

    @property
    def n(self) -> int:
        return int(self.params.get("n", 1))

    def engine_rids(self) -> list[str]:
        """The ids the engine gives this item's requests (n > 1: "{rid}-{i}")."""
        return [self.rid] if self.n == 1 else [f"{self.rid}-{i}" for i in range(self.n)]

    def split(self) -> list["GenItem"]:
        """One n=1 item per sample (for streaming); sample i draws with seed + i, as the engine does."""
        if self.n == 1:
            return [self]
        out = []
        for i in range(self.n):
            params = {**self.params, "n": 1}
            if params.get("seed") is not None:
                params["seed"] = params["seed"] + i
            out.append(dataclasses.replace(self, params=params, rid=f"{self.rid}-{i}"))
        return out


def engine_sampling_params(d: dict[str, Any] | None, where: str = "sampling_params") -> dict[str, Any]:
    """SGLang sampling params -> the engine's dict (typed and checked; raises APIError 400)."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise APIError(400, f"{where} must be an object", param=where)
    try:
        sp = validate(SGLSamplingParams, d)
    except APIError as e:
        raise APIError(400, f"{where}.{e.message}", param=f"{where}.{e.param}" if e.param else where) from None
    out: dict[str, Any] = {}
    for name, value in sp.model_dump(exclude_none=True).items():
        if name in SGLSamplingParams.UNSUPPORTED:
            continue  # validated to be neutral
        if name == "sampling_seed":
            name = "seed"
        if name in SERVER_SAMPLING_FIELDS:
            continue
        if name not in ENGINE_SAMPLING_FIELDS:
            if value in NEUTRAL.get(name, ()):
                continue
            raise APIError(400, f"{where}.{name} is not supported by this build of jaxsgl",
                           param=f"{where}.{name}")
        out[name] = value
    return out


def _kwargs(items: list[GenItem]) -> dict[str, Any]:
    """Engine.async_generate keyword arguments for a batch of items (always the list form)."""
    kw: dict[str, Any] = dict(sampling_params=[it.params for it in items],
                              return_logprob=[it.return_logprob for it in items],
                              logprob_start_len=[it.logprob_start_len for it in items],
                              top_logprobs_num=max(it.top_logprobs_num for it in items),
                              priority=[it.priority for it in items], rid=[it.rid for it in items])
    if all(it.input_ids is not None for it in items):
        kw["input_ids"] = [it.input_ids for it in items]
    elif all(it.text is not None for it in items):
        kw["prompt"] = [it.text for it in items]
    else:  # mixed: tokenize text items here
        raise APIError(400, "a batch must be all text or all input_ids")
    return kw


async def call_engine(state: ServerState, items: list[GenItem], stream: bool) -> Any:
    """engine.async_generate with the engine's errors mapped: ValueError -> 400, stopped -> 503."""
    engine = state.require_engine()
    try:
        return await engine.async_generate(stream=stream, **_kwargs(items))
    except ValueError as e:
        raise APIError(400, str(e)) from None
    except RuntimeError as e:
        if "shut down" in str(e):
            raise APIError(503, "the server is shutting down") from None
        raise


async def until_disconnect(request: Request | None, aw: Awaitable[T]) -> T:
    """Await aw, cancelling it (and so aborting its engine requests) if the client disconnects."""
    task = asyncio.ensure_future(aw)
    if request is None:
        return await task
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        raise ClientDisconnected()
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def generate_all(state: ServerState, request: Request | None, items: list[GenItem],
                       log_metrics: bool = True) -> list[dict[str, Any]]:
    """Run items to completion in one engine call (validated together); results prompt-major, n each."""
    rids = [r for it in items for r in it.engine_rids()]
    state.track(rids)
    try:
        results = await until_disconnect(request, call_engine(state, items, stream=False))
    except ClientDisconnected:
        if log_metrics:
            state.metrics.observe_aborted(len(rids))
        raise
    except (ValueError, RuntimeError) as e:
        raise request_failure(e) from None
    finally:
        state.untrack(rids)
    if log_metrics:
        for r in results:
            state.metrics.observe_finished(r["meta_info"], streamed=False)
    return results


def request_failure(e: Exception) -> Exception:
    """A failed engine request: bad input found after submission (the engine raises it as a
    ValueError, e.g. a constraint that does not compile) is the client's fault (400); anything
    else stays a server error."""
    if isinstance(e, ValueError):
        return APIError(400, str(e))
    return e
