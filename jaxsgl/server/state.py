"""ServerState: the engine (loaded in the background), server settings, in-flight requests, metrics.

The HTTP port opens before the model is loaded: `require_engine()` answers 503 until `load()`
has finished (or failed), and again once shutdown has begun.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jaxsgl.server.errors import APIError
from jaxsgl.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass
class ServerConfig:
    """Settings of the HTTP layer (the engine's own options live in EngineOptions)."""

    host: str = "127.0.0.1"
    port: int = 30000
    model_path: str | None = None
    served_model_name: str | None = None  # default: the model path (as SGLang)
    log_requests: bool = False
    max_request_bytes: int = 32 * 1024 * 1024
    api_key: str | None = None
    stream_interval: int = 1  # SGLang's --stream-interval: streams send an event every N tokens
    engine_process: bool = True  # the engine in a child process (engine/engine_process.py); False: a thread here
    engine_options: dict[str, Any] = field(default_factory=dict)


class ServerState:
    """Shared by every handler. `engine` is None until loaded; mutated by load() and begin_shutdown()."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.engine: Any = None  # jaxsgl.Engine (or an EngineProcess) once loaded
        self.load_error: str | None = None
        self.shutting_down = False
        self.started = time.time()
        self.loaded_at: float | None = None
        self.inflight: set[str] = set()  # engine request ids of requests being served
        self._lock = threading.Lock()
        self.ready = threading.Event()  # set when loading ends, successfully or not
        self.metrics = Metrics(self.model_name, self._load_snapshot)

    # ------------------------------------------------------------------ engine lifecycle
    def load(self, factory: Callable[[], Any]) -> None:
        """Build the engine with factory() (call from a background thread); records failures."""
        t0 = time.perf_counter()
        try:
            engine = factory()
        except BaseException as e:  # noqa: BLE001 - reported through /health and the logs
            log.exception("model failed to load")
            self.load_error = f"{type(e).__name__}: {e}"
        else:
            with self._lock:
                if self.shutting_down:  # stopped while loading
                    engine.shutdown()
                    return
                self.engine = engine
            self.loaded_at = time.time()
            log.info("model loaded in %.1fs; serving %s", time.perf_counter() - t0, self.model_name)
        finally:
            self.ready.set()

    def require_engine(self) -> Any:
        """The engine, or APIError(503) while loading, after a failed load, or during shutdown."""
        if self.shutting_down:
            raise APIError(503, "the server is shutting down")
        if self.engine is None:
            if self.load_error is not None:
                raise APIError(503, f"the model failed to load: {self.load_error}")
            raise APIError(503, f"the model is still loading ({time.time() - self.started:.0f}s so far); "
                                "retry when GET /health answers 200")
        return self.engine

    @property
    def model_name(self) -> str:
        c = self.config
        return c.served_model_name or c.model_path or "default"

    def model_names(self) -> set[str]:
        """Names a request's "model" field may use."""
        names = {self.model_name, "default"}
        if self.config.model_path:
            names.add(self.config.model_path)
        if self.engine is not None:
            names.add(str(self.engine.model_dir))
        return names

    def check_model(self, name: str) -> None:
        if name not in self.model_names():
            raise APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'",
                           param="model", code="model_not_found")

    def _load_snapshot(self) -> dict[str, Any] | None:
        return self.engine.get_load() if self.engine is not None else None

    # ------------------------------------------------------------------ in-flight requests
    def track(self, rids: list[str]) -> None:
        with self._lock:
            self.inflight.update(rids)

    def untrack(self, rids: list[str]) -> None:
        with self._lock:
            self.inflight.difference_update(rids)

    def abort_all(self) -> int:
        """Abort every in-flight request (their handlers then answer finish_reason 'abort')."""
        with self._lock:
            rids = list(self.inflight)
        if self.engine is not None:
            for rid in rids:
                self.engine.abort(rid)
        return len(rids)

    def begin_shutdown(self) -> None:
        """Refuse new requests (503) and abort those in flight; engine.shutdown() comes after."""
        with self._lock:
            self.shutting_down = True
        n = self.abort_all()
        log.info("shutting down: aborted %d in-flight requests", n)

    def shutdown_engine(self) -> None:
        """Stop the engine's loop thread (after in-flight requests have ended)."""
        with self._lock:
            self.shutting_down = True
            engine, self.engine = self.engine, None
        if engine is not None:
            engine.shutdown()
