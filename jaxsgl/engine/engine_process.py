"""EngineProcess: the Engine in a process of its own, behind the Engine's serving API.

In one process, whatever else runs Python (an HTTP server's event loop: parsing, SSE, socket writes) holds
the GIL that the engine's loop thread needs between steps, and every step waits for it (issue 12 measured
the server at 88-92% of in-process throughput that way). EngineProcess starts the Engine in a child process
(a fresh `python -m` interpreter) and talks to it over a socket pair, as SGLang's tokenizer manager talks to its scheduler:

- this process: async_generate / abort / get_load / get_server_info / cache_stats / flush_cache / trace /
  request_records / shutdown,
  the tokenizer (loaded here too: tokenize, chat templates), model_dir, cfg, options, context_len. A reader
  thread takes the child's messages and wakes each event loop once per message (LoopBridge);
- the child: Engine.submit() per call; its events are batched by a sender thread, one pickled message per
  burst (about one per engine step), so the child's own Python work per token is an append and a pickle.

This module imports no JAX; the child does (jaxsgl.engine.engine).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import subprocess
import sys
import threading
import weakref
from concurrent.futures import Future
from multiprocessing.connection import Connection
from typing import Any

from jaxsgl.engine.async_stream import AsyncStream, LoopBridge
from jaxsgl.engine.options import EngineOptions
from jaxsgl.engine.request_state import _DONE
from jaxsgl.model.resolve import resolve_model_dir
from jaxsgl.tokenizer import load_tokenizer_in_background

log = logging.getLogger(__name__)
RPC_TIMEOUT_S = 60.0
_RPC_METHODS = ("get_load", "get_server_info", "cache_stats", "flush_cache", "trace", "request_records",
                "wait_idle")


class RemoteRequest:
    """One request of this process, fed by the reader thread (AsyncStream's source)."""

    __slots__ = ("rid", "events", "sink", "result", "error", "done")

    def __init__(self, rid: str) -> None:
        self.rid = rid
        self.events: Any = None  # LoopBridge.attach sets events and sink
        self.sink: Any = None
        self.result: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.done = False

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


class _Call:
    """An async_generate call waiting for the child to accept it."""

    def __init__(self, bridge: LoopBridge) -> None:
        self.bridge = bridge
        self.future: Future = Future()


class EngineProcess:
    """Engine(model_path, **options) in a child process. Construction blocks until the child's engine
    is ready (raises what Engine() raised there)."""

    def __init__(self, model_path: str | None = None, **options: Any) -> None:
        self.options = EngineOptions.from_kwargs(model_path, options)  # bad options fail here, before a spawn
        # our tokenizer (for the API's tokenize/chat templates) loads while the child starts its engine
        tokenizer_load = None if self.options.skip_tokenizer_init else \
            load_tokenizer_in_background(resolve_model_dir(model_path))
        ours, theirs = socket.socketpair()
        # a fresh interpreter (`python -m`), not multiprocessing's spawn: that one re-runs the caller's
        # __main__ in the child, which a script without a main guard does not survive
        self._proc = subprocess.Popen([sys.executable, "-m", "jaxsgl.engine.engine_process", str(theirs.fileno())],
                                      pass_fds=(theirs.fileno(),))
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((model_path, options, logging.getLogger().getEffectiveLevel()))
        try:
            kind, info = self._conn.recv()
        except EOFError:
            self._proc.wait(timeout=30)
            raise RuntimeError(f"the engine process exited with status {self._proc.returncode} while starting") from None
        if kind == "failed":
            self._proc.wait(timeout=30)
            raise info
        self.model_dir, self.cfg, self.context_len = info["model_dir"], info["cfg"], info["context_len"]
        self.tokenizer = None if tokenizer_load is None else tokenizer_load.result()
        self._send_lock = threading.Lock()
        self._ids = itertools.count()
        self._calls: dict[int, Any] = {}  # call id -> _Call (generate) or Future (RPC)
        self._requests: dict[str, RemoteRequest] = {}
        self._early: dict[str, list[tuple[str, Any]]] = {}  # events that overtook their call's acceptance
        self._bridges: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopBridge] = weakref.WeakKeyDictionary()
        self._closed = False
        self._reader = threading.Thread(target=self._read, name="jaxsgl-engine-reader", daemon=True)
        self._reader.start()

    # ------------------------------------------------------------------ the Engine's serving API
    async def async_generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                             return_logprob: Any = False, logprob_start_len: Any = None, top_logprobs_num: int = 0,
                             stream: bool = False, priority: Any = None, rid: Any = None) -> Any:
        """Engine.async_generate, run by the child: the result(s), or with stream=True an AsyncStream.
        Cancelling the awaiting task, or closing the stream early, aborts the request(s)."""
        single = (input_ids is not None and (not input_ids or isinstance(input_ids[0], int))) or isinstance(prompt, str)
        loop = asyncio.get_running_loop()
        bridge = self._bridges.get(loop)
        if bridge is None:
            bridge = self._bridges[loop] = LoopBridge(loop)
        call, cid = _Call(bridge), next(self._ids)
        self._calls[cid] = call
        kwargs = dict(prompt=prompt, sampling_params=sampling_params, input_ids=input_ids,
                      return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                      top_logprobs_num=top_logprobs_num, stream=stream, priority=priority, rid=rid)
        self._send(("generate", cid, kwargs))
        try:
            reqs: list[RemoteRequest] = await asyncio.wrap_future(call.future)  # raises the child's ValueError
        except asyncio.CancelledError:  # abort what the child accepts after all
            call.future.add_done_callback(lambda f: None if f.exception() else [self.abort(r.rid) for r in f.result()])
            raise
        if stream:
            return AsyncStream(reqs[0], lambda r, ev: ev, self.abort)
        try:
            for r in reqs:
                while await r.events.get() is not _DONE:
                    pass
                r.raise_error()
        finally:
            for r in reqs:
                if not r.done:
                    self.abort(r.rid)
        results = [r.result for r in reqs]
        return results[0] if single and len(results) == 1 else results

    def abort(self, rid: str) -> None:
        """Cancel a request (its caller gets finish_reason 'abort')."""
        if not self._closed:
            try:
                self._send(("abort", rid))
            except RuntimeError:
                pass  # the child is gone: so is the request

    def get_load(self) -> dict[str, Any]:
        return self._rpc("get_load")

    def get_server_info(self) -> dict[str, Any]:
        return self._rpc("get_server_info")

    def cache_stats(self) -> dict[str, Any]:
        return self._rpc("cache_stats")

    def flush_cache(self) -> None:
        self._rpc("flush_cache")

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Engine.wait_idle in the child."""
        return self._rpc("wait_idle", timeout)

    def trace(self, since_step: int = 0) -> list[dict]:
        """Engine.trace: the child's per-step records (times on perf_counter's clock, which a child shares)."""
        return self._rpc("trace", since_step)

    def request_records(self, t0: float | None = None) -> list[dict]:
        """Engine.request_records: the child's per-request records (arrival = when the child took the call)."""
        return self._rpc("request_records", t0)

    def shutdown(self) -> None:
        """Stop the child's engine (requests in flight fail) and wait for the child to exit."""
        if not self._closed:
            try:
                self._send(("shutdown",))
            except RuntimeError:
                pass
            self._closed = True
        try:
            self._proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            log.warning("engine process did not exit: terminating it")
            self._proc.terminate()
            self._proc.wait(timeout=10)
        self._reader.join(timeout=10)

    def __enter__(self) -> "EngineProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ this process's side of the pipe
    def _send(self, msg: tuple) -> None:
        """Raises RuntimeError("engine is shut down") once the child is gone (the server answers 503)."""
        try:
            with self._send_lock:
                self._conn.send(msg)
        except OSError:
            self._closed = True
            raise RuntimeError("engine is shut down") from None

    def _rpc(self, method: str, *args: Any) -> Any:
        fut: Future = Future()
        cid = next(self._ids)
        self._calls[cid] = fut
        self._send(("call", cid, method, args))
        return fut.result(timeout=RPC_TIMEOUT_S)

    def _read(self) -> None:
        """The reader thread: route the child's messages until it exits (then fail what is left)."""
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "events":
                    for rid, kind, payload in msg[1]:
                        req = self._requests.get(rid)
                        if req is None:
                            self._early.setdefault(rid, []).append((kind, payload))
                        else:
                            self._deliver(req, kind, payload)
                elif msg[0] == "accepted":
                    self._accept(self._calls.pop(msg[1]), msg[2])
                elif msg[0] in ("rejected", "returned"):
                    fut = self._calls.pop(msg[1])
                    fut = fut.future if isinstance(fut, _Call) else fut
                    fut.set_exception(msg[2]) if msg[0] == "rejected" else fut.set_result(msg[2])
        except (EOFError, OSError):
            pass
        self._closed = True
        gone = RuntimeError("engine is shut down")
        for call in list(self._calls.values()):
            fut = call.future if isinstance(call, _Call) else call
            if not fut.done():
                fut.set_exception(gone)
        for req in list(self._requests.values()):
            self._deliver(req, "failed", gone)

    def _accept(self, call: _Call, rids: list[str]) -> None:
        reqs = []
        for rid in rids:
            req = RemoteRequest(rid)
            call.bridge.attach(req)  # type: ignore[arg-type]
            self._requests[rid] = req
            reqs.append(req)
            for kind, payload in self._early.pop(rid, ()):
                self._deliver(req, kind, payload)
        call.future.set_result(reqs)

    def _deliver(self, req: RemoteRequest, kind: str, payload: Any) -> None:
        if kind == "increment":
            req.sink(payload)
            return
        if kind == "finished":
            req.result = payload
        else:
            req.error = payload
        req.done = True
        self._requests.pop(req.rid, None)
        req.sink(_DONE)


def _child_main(conn: Connection) -> None:
    """The engine process: build the Engine, then serve the parent's messages until it says shutdown or
    goes away."""
    model_path, options, log_level = conn.recv()
    logging.basicConfig(level=log_level or logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from jaxsgl.engine.engine import Engine

    try:
        engine = Engine(model_path, **options)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("failed", e if _picklable(e) else RuntimeError(f"{type(e).__name__}: {e}")))
        return
    conn.send(("ready", {"model_dir": engine.model_dir, "cfg": engine.cfg, "context_len": engine.context_len}))
    send_lock, cv = threading.Lock(), threading.Condition()
    outbox: list[tuple[str, str, Any]] = []
    stopping = False

    def on_event(rid: str, kind: str, payload: Any) -> None:  # the engine's loop thread
        with cv:
            outbox.append((rid, kind, payload))
            if len(outbox) == 1:
                cv.notify()

    def sender() -> None:  # one message per burst of events
        while True:
            with cv:
                while not outbox and not stopping:
                    cv.wait()
                batch = outbox[:]
                outbox.clear()
                if not batch and stopping:
                    return
            with send_lock:
                conn.send(("events", batch))

    def reply(msg: tuple) -> None:
        with send_lock:
            conn.send(msg)

    thread = threading.Thread(target=sender, name="jaxsgl-engine-sender", daemon=True)
    thread.start()
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "generate":
                try:
                    rids = engine.submit(on_event, **msg[2])
                except (ValueError, RuntimeError) as e:
                    reply(("rejected", msg[1], e))
                else:
                    reply(("accepted", msg[1], rids))
            elif msg[0] == "abort":
                engine.abort(msg[1])
            elif msg[0] == "call" and msg[2] in _RPC_METHODS:
                reply(("returned", msg[1], getattr(engine, msg[2])(*msg[3])))
            elif msg[0] == "shutdown":
                break
    finally:
        engine.shutdown()  # requests still in flight fail: their events go out before the sender stops
        with cv:
            stopping = True
            cv.notify()
        thread.join(timeout=30)
        conn.close()


def _picklable(e: BaseException) -> bool:
    import pickle

    try:
        pickle.loads(pickle.dumps(e))
        return True
    except Exception:  # noqa: BLE001
        return False


if __name__ == "__main__":  # the child: `python -m jaxsgl.engine.engine_process FD`
    _child_main(Connection(int(sys.argv[1])))
