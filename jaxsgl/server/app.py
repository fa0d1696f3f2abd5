"""create_app(state): the FastAPI app (native + OpenAI routes, /metrics), with body-size, API-key and
request-log middleware and OpenAI-shaped errors."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jaxsgl.server import native, openai_api
from jaxsgl.server.errors import APIError, error_response, install_handlers
from jaxsgl.server.state import ServerState

log = logging.getLogger("jaxsgl.server")
LOG_BODY_CHARS = 2000
# answered without the API key, matched by prefix as SGLang does (k8s probes, Prometheus scrapes)
OPEN_PREFIXES = ("/health", "/ready", "/metrics")


def authorized(method: str, path: str, authorization: str | None, api_key: str | None) -> bool:
    """SGLang's rule (srt/utils/auth.py, normal endpoints): without a key everything is open; with one,
    OPTIONS and the OPEN_PREFIXES paths are open and every other request needs `Authorization: Bearer
    KEY` (scheme case-insensitive, key compared in constant time)."""
    if not api_key or method == "OPTIONS" or path.startswith(OPEN_PREFIXES):
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(token.encode(), api_key.encode())


class GuardMiddleware:
    """Pure ASGI middleware: 401 without the API key (checked first), 413 for bodies over the limit
    (Content-Length or counted), and one log line per request (with --log-requests, also the body, truncated)."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cfg = self.state.config
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if not authorized(scope.get("method", ""), scope.get("path", ""), headers.get("authorization"), cfg.api_key):
            msg = ("invalid API key" if "authorization" in headers else "missing API key") + \
                  " (send the header `Authorization: Bearer KEY`)"
            return await error_response(401, msg, code="invalid_api_key")(scope, receive, send)
        limit = cfg.max_request_bytes
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return await error_response(400, f"invalid Content-Length {length[:40]!r}")(scope, receive, send)
            if int(length) > limit:
                return await error_response(413, f"the request body ({int(length)} bytes) exceeds the limit of "
                                                 f"{limit} bytes", code="request_too_large")(scope, receive, send)
        received, body_log, status = 0, bytearray(), [0]
        t0 = time.perf_counter()

        async def limited_receive() -> Message:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                chunk = msg.get("body", b"")
                received += len(chunk)
                if cfg.log_requests and len(body_log) < LOG_BODY_CHARS:
                    body_log.extend(chunk[:LOG_BODY_CHARS - len(body_log)])
                if received > limit:
                    raise APIError(413, f"the request body exceeds the limit of {limit} bytes",
                                   code="request_too_large")
            return msg

        async def logged_send(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = msg["status"]
            await send(msg)

        logged = cfg.log_requests or log.isEnabledFor(logging.DEBUG)
        try:  # (unlogged: the server's own send, one call less per streamed chunk)
            await self.app(scope, limited_receive, logged_send if logged else send)
        finally:
            if logged:
                extra = f" body={bytes(body_log).decode('utf-8', 'replace')!r}" if cfg.log_requests else ""
                log.info("%s %s -> %s in %.3fs%s", scope.get("method"), scope.get("path"), status[0] or "-",
                         time.perf_counter() - t0, extra)


def create_app(state: ServerState) -> FastAPI:
    """The app over `state` (stored as app.state.server). Its lifespan ends by aborting in-flight
    requests and shutting the engine down."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.loop = asyncio.get_running_loop()  # type: ignore[attr-defined]
        yield
        state.begin_shutdown()
        await asyncio.to_thread(state.shutdown_engine)

    app = FastAPI(title="jaxsgl", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    install_handlers(app)
    app.include_router(native.router)
    app.include_router(openai_api.router)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/")
    async def root() -> dict[str, Any]:
        return {"name": "jaxsgl", "model": state.model_name, "ready": state.engine is not None}

    app.add_middleware(GuardMiddleware, state=state)
    return app
