"""`python -m jaxsgl.launch_server` / `jaxsgl serve`: argument parsing, background model load, uvicorn.

    python -m jaxsgl.launch_server --model-path PATH --host 127.0.0.1 --port 30000 [engine options]

Every EngineOptions field is a flag with SGLang's name (`--max-running-requests 64`,
`--disable-radix-cache`, ...). The port opens at once; the model loads on a background thread
(requests get 503 until it is ready), then the GC heap is frozen (freeze_heap). SIGTERM / SIGINT abort
in-flight requests, then the engine shuts down.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import uvicorn

from jaxsgl.engine.options import EngineOptions
from jaxsgl.server.app import create_app
from jaxsgl.server.state import ServerConfig, ServerState

log = logging.getLogger("jaxsgl.server")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_engine_options(parser: argparse.ArgumentParser) -> None:
    """One flag per EngineOptions field (mutates parser); types come from the field annotations."""
    group = parser.add_argument_group("engine options (SGLang's server-argument names)")
    for f in dataclasses.fields(EngineOptions):
        ann, default = str(f.type), f.default
        help_ = f"(default: {default})"
        if f.name == "model_path":
            group.add_argument("--model-path", "--model", dest="model_path", default=None,
                               help="HF checkpoint directory or .gguf file (default: the embedded SmolLM2-135M)")
        elif ann.startswith("bool"):
            action = argparse.BooleanOptionalAction if default else "store_true"
            group.add_argument(_flag(f.name), dest=f.name, action=action, default=default, help=help_)
        elif "list[int]" in ann:
            group.add_argument(_flag(f.name), dest=f.name, type=int, nargs="+", default=None, help=help_)
        else:
            typ: Callable[[str], Any] = int if ann.startswith("int") else float if ann.startswith("float") else str
            group.add_argument(_flag(f.name), dest=f.name, type=typ, default=default, help=help_)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:  # (NaN too)
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxsgl serve", description="jaxsgl HTTP server: SGLang's native API and the "
                                "OpenAI API over one model.")
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=int, default=30000)
    g.add_argument("--served-model-name", default=None, help="the model id in /v1/models (default: the model path)")
    g.add_argument("--log-requests", action="store_true", help="log every request with its body (truncated)")
    g.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    g.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY`")
    g.add_argument("--max-request-bytes", type=int, default=32 * 1024 * 1024, help="larger bodies get 413")
    g.add_argument("--stream-interval", type=_positive_int, default=1,
                   help="streams send an event every N tokens (the first, then 1 + kN, and the last; the text "
                        "in between is merged): fewer, larger chunks cost the server less per token")
    g.add_argument("--engine-process", action=argparse.BooleanOptionalAction, default=True,
                   help="run the engine in a child process (engine/engine_process.py), so that HTTP work never "
                        "holds the GIL the engine's loop thread needs (SGLang's layout; on the H200 98.6%% of "
                        "in-process throughput at rate inf vs 93.4%% with --no-engine-process, docs/perf.md)")
    g.add_argument("--gil-switch-interval", type=_positive_float, default=None, metavar="SECONDS",
                   help="sys.setswitchinterval: how long the HTTP thread may hold the GIL while the engine's loop "
                        "thread waits for it (Python's default: 0.005)")
    g.add_argument("--timeout-graceful-shutdown", type=float, default=30.0,
                   help="seconds to let aborted requests answer before connections are closed")
    add_engine_options(p)
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    names = {f.name for f in dataclasses.fields(EngineOptions)} - {"model_path"}
    return ServerConfig(host=args.host, port=args.port, model_path=args.model_path,
                        served_model_name=args.served_model_name, log_requests=args.log_requests,
                        max_request_bytes=args.max_request_bytes, api_key=args.api_key,
                        stream_interval=args.stream_interval, engine_process=args.engine_process,
                        engine_options={k: getattr(args, k) for k in names})


def engine_factory(config: ServerConfig) -> Callable[[], Any]:
    def make() -> Any:
        if config.engine_process:
            from jaxsgl.engine.engine_process import EngineProcess

            return EngineProcess(config.model_path, **config.engine_options)
        from jaxsgl.engine.engine import Engine

        return Engine(config.model_path, **config.engine_options)
    return make


class Server(uvicorn.Server):
    """uvicorn.Server whose signal handler first aborts in-flight requests (scheduled on the event loop:
    a signal handler must not take the locks the loop may hold)."""

    def __init__(self, state: ServerState, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.state = state

    def handle_exit(self, sig: int, frame: Any) -> None:
        loop = getattr(self.state, "loop", None)
        if loop is not None and not self.state.shutting_down:
            loop.call_soon_threadsafe(self.state.begin_shutdown)
        super().handle_exit(sig, frame)


def freeze_heap() -> None:
    """Collect garbage, then move every object alive (the loaded engine: JAX's, the tokenizer's, the
    model's state, millions of objects) to the GC's permanent generation, as vLLM does after its warm-up:
    a full collection while serving then walks only what serving allocated, instead of stopping every
    thread for the whole heap (0.26 s on a 2-core CPU with a tiny model, on whichever thread triggered it)."""
    t0 = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("GC: %d objects frozen in %.2fs", gc.get_freeze_count(), time.perf_counter() - t0)


def serve(state: ServerState, factory: Callable[[], Any], log_level: str = "info",
          timeout_graceful_shutdown: float = 30.0) -> int:
    """Open the port, load the model in the background, serve until a signal; returns an exit code
    (1 if the model failed to load)."""
    cfg = state.config
    app = create_app(state)
    uconfig = uvicorn.Config(app, host=cfg.host, port=cfg.port, log_level=log_level, access_log=False,
                             timeout_graceful_shutdown=timeout_graceful_shutdown, lifespan="on")
    server = Server(state, uconfig)

    def make() -> Any:
        engine = factory()
        freeze_heap()
        return engine

    def load() -> None:
        state.load(make)
        if state.load_error is not None:
            server.should_exit = True

    threading.Thread(target=load, name="jaxsgl-load", daemon=True).start()
    server.run()
    return 1 if state.load_error is not None else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m jaxsgl.launch_server` (and `jaxsgl serve`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    config = config_from_args(args)
    try:  # bad option values fail here, with the usage line, not later in the background load
        EngineOptions.from_kwargs(config.model_path, config.engine_options)
    except ValueError as e:
        parser.error(str(e))
    if args.gil_switch_interval is not None:
        sys.setswitchinterval(args.gil_switch_interval)
    state = ServerState(config)
    log.info("jaxsgl server on http://%s:%d (model loading in the background)", config.host, config.port)
    return serve(state, engine_factory(config), args.log_level, args.timeout_graceful_shutdown)
