"""SGLang's native HTTP API: /generate, /health, /get_model_info, /get_server_info, /flush_cache, ...

Field names and response shapes follow SGLang's http_server.py, so SGLang's own clients
(`sgl.RuntimeEndpoint`, `sglang.bench_serving --backend sglang`, `sglang-router`) work unchanged.
"""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

import jaxsgl
from jaxsgl.server.errors import APIError, error_body, parse_body, validate
from jaxsgl.server.formatting import SSE_DONE, NativeStreamEvents, native_meta, native_result, sse
from jaxsgl.server.generation import ClientDisconnected, GenItem, engine_sampling_params, generate_all
from jaxsgl.server.protocol import AbortRequest, ChatMessage, DetokenizeRequest, GenerateRequest, TokenizeRequest
from jaxsgl.server.state import ServerState
from jaxsgl.server.streaming import Streams, open_streams
from jaxsgl.tokenizer import chat_prompt_ids

log = logging.getLogger(__name__)
router = APIRouter()
HEALTH_TIMEOUT_S = 20.0


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _per(value: Any, k: int, name: str, default: Any) -> list[Any]:
    """SGLang's "one value or a list of k values" arguments, as a list of k."""
    if value is None:
        return [default] * k
    if isinstance(value, list):
        if len(value) != k:
            raise APIError(400, f"{name} has {len(value)} entries for {k} prompts", param=name)
        return [default if v is None else v for v in value]
    return [value] * k


def generate_items(req: GenerateRequest) -> tuple[bool, list[GenItem]]:
    """(single, items) of a /generate request, sampling params translated to the engine's."""
    if req.text is not None:
        single = isinstance(req.text, str)
        texts: list[str | None] = [req.text] if single else list(req.text)  # type: ignore[list-item]
        ids: list[list[int] | None] = [None] * len(texts)
    else:
        single = not req.input_ids or isinstance(req.input_ids[0], int)
        ids = [req.input_ids] if single else list(req.input_ids)  # type: ignore[list-item]
        texts = [None] * len(ids)
    k = len(texts)
    if k == 0:
        raise APIError(400, "the prompt batch is empty", param="text" if req.text is not None else "input_ids")
    params = _per(req.sampling_params, k, "sampling_params", None)
    lp, start = _per(req.return_logprob, k, "return_logprob", False), _per(req.logprob_start_len, k,
                                                                           "logprob_start_len", None)
    top, prio = _per(req.top_logprobs_num, k, "top_logprobs_num", 0), _per(req.priority, k, "priority", 0)
    rids = _per(req.rid, k, "rid", None)
    items = []
    for i in range(k):
        items.append(GenItem(text=texts[i], input_ids=ids[i], params=engine_sampling_params(
            params[i], "sampling_params" if single else f"sampling_params[{i}]"), return_logprob=bool(lp[i]),
            logprob_start_len=start[i], top_logprobs_num=int(top[i]), priority=int(prio[i]),
            rid=str(rids[i]) if rids[i] is not None else uuid.uuid4().hex,
            stream_interval=params[i].get("stream_interval") if isinstance(params[i], dict) else None))
    return single, items


@router.post("/generate")
async def generate(request: Request) -> Response:
    state = _state(request)
    req = await parse_body(request, GenerateRequest)
    engine = state.require_engine()
    single, items = generate_items(req)
    tops = [it.top_logprobs_num for it in items for _ in range(it.n)]
    if req.stream:
        try:
            merged = await open_streams(state, request, items, req.log_metrics)
        except ClientDisconnected:
            return Response(status_code=499)
        return StreamingResponse(_native_stream(engine, merged, req, tops, len(tops) > 1),
                                 media_type="text/event-stream")
    try:
        results = await generate_all(state, request, items, req.log_metrics)
    except ClientDisconnected:
        return Response(status_code=499)
    out = [native_result(r, engine.tokenizer, req.return_text_in_logprobs, t) for r, t in zip(results, tops)]
    return JSONResponse(out[0] if single and len(out) == 1 else out)


async def _native_stream(engine: Any, streams: Streams, req: GenerateRequest, tops: list[int],
                         indexed: bool) -> AsyncIterator[bytes]:
    """SSE of cumulative text + meta_info per increment (with "index" for batches), then [DONE]; the
    events of the increments delivered together are written together."""
    events: dict[int, NativeStreamEvents] = {}
    tok, in_lp = engine.tokenizer, req.return_text_in_logprobs
    try:
        async for batch in streams:
            parts = []
            for i, inc in batch:
                ev = events.get(i)
                if ev is None:
                    ev = events[i] = NativeStreamEvents(i if indexed else None)
                parts.append(ev.event(inc, native_meta(inc["meta_info"], tok, in_lp, tops[i])))
            yield b"".join(parts)
    except Exception as e:  # noqa: BLE001 - the status line is sent: report in-band, as SGLang does
        log.exception("stream failed")
        yield sse(error_body(500, str(e)))
    finally:
        await streams.aclose()
    yield SSE_DONE


@router.get("/health")
async def health(request: Request) -> Response:
    """200 once the model is loaded; 503 (with the reason) while loading, after a failure, when stopping."""
    state = _state(request)
    try:
        state.require_engine()
    except APIError as e:
        return JSONResponse(error_body(503, e.message), status_code=503)
    return Response(status_code=200)


@router.get("/health_generate")
async def health_generate(request: Request) -> Response:
    """Generate one token; 200 if it comes back within HEALTH_TIMEOUT_S."""
    state = _state(request)
    try:
        state.require_engine()
        item = GenItem(input_ids=[0], params={"max_new_tokens": 1, "temperature": 0.0})
        await asyncio.wait_for(generate_all(state, request, [item], log_metrics=False), HEALTH_TIMEOUT_S)
    except (APIError, asyncio.TimeoutError, RuntimeError, ClientDisconnected) as e:
        return JSONResponse(error_body(503, f"health check failed: {e!r}"), status_code=503)
    return Response(status_code=200)


def model_info(state: ServerState) -> dict[str, Any]:
    engine = state.require_engine()
    try:
        cfg = json.loads((engine.model_dir / "config.json").read_text())
    except (OSError, ValueError, TypeError):
        cfg = {}
    return {"model_path": state.config.model_path or str(engine.model_dir),
            "tokenizer_path": str(engine.model_dir), "served_model_name": state.model_name,
            "is_generation": True, "preferred_sampling_params": None, "weight_version": "default",
            "load_format": engine.options.load_format, "has_image_understanding": False,
            "has_audio_understanding": False, "model_type": cfg.get("model_type"),
            "architectures": cfg.get("architectures"), "context_length": engine.context_len}


@router.get("/get_model_info")
@router.get("/model_info")
async def get_model_info(request: Request) -> JSONResponse:
    return JSONResponse(model_info(_state(request)))


@router.get("/get_server_info")
@router.get("/server_info")
async def get_server_info(request: Request) -> JSONResponse:
    state = _state(request)
    engine = state.require_engine()
    info = engine.get_server_info()
    load = engine.get_load()
    internal = {**load, "cache": engine.cache_stats(), "avg_spec_accept_length": None,
                "last_gen_throughput": load.get("gen_throughput", 0.0)}
    out = {**info, "served_model_name": state.model_name, "host": state.config.host, "port": state.config.port,
           "log_requests": state.config.log_requests, "startup_time": state.started,
           "internal_states": [internal], "version": getattr(jaxsgl, "__version__", "0"), "frontend": "jaxsgl"}
    return JSONResponse(json.loads(json.dumps(out, default=str)))


@router.api_route("/flush_cache", methods=["GET", "POST"])
async def flush_cache(request: Request) -> PlainTextResponse:
    _state(request).require_engine().flush_cache()
    return PlainTextResponse("Cache flushed.\nPlease check backend logs for more details. (Cached prefixes that "
                             "running requests hold are kept.)\n")


@router.post("/abort_request")
async def abort_request(request: Request) -> Response:
    state = _state(request)
    req = await parse_body(request, AbortRequest)
    engine = state.require_engine()
    if req.abort_all:
        state.abort_all()
    elif req.rid:
        engine.abort(req.rid)
        for rid in [r for r in list(state.inflight) if r.startswith(req.rid + "-")]:
            engine.abort(rid)  # the samples of an n > 1 request
    else:
        raise APIError(400, "give 'rid' or 'abort_all': true", param="rid")
    return Response(status_code=200)


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(request: Request) -> JSONResponse:
    state = _state(request)
    req = await parse_body(request, TokenizeRequest)
    engine = state.require_engine()
    tok = engine.tokenizer
    if tok is None:
        raise APIError(400, "this server was started with --skip-tokenizer-init")
    if req.messages is not None:
        msgs = [{"role": m.role, "content": m.text()} for m in (validate(ChatMessage, x) for x in req.messages)]
        try:
            ids: list[int] | list[list[int]] = chat_prompt_ids(tok, msgs)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        count: int | list[int] = len(ids)
    elif isinstance(req.prompt, str):
        ids = tok.encode(req.prompt, add_special_tokens=req.add_special_tokens)
        count = len(ids)
    else:
        ids = [tok.encode(p, add_special_tokens=req.add_special_tokens) for p in req.prompt or []]
        count = [len(x) for x in ids]
    return JSONResponse({"tokens": ids, "count": count, "max_model_len": engine.context_len})


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(request: Request) -> JSONResponse:
    state = _state(request)
    req = await parse_body(request, DetokenizeRequest)
    engine = state.require_engine()
    if engine.tokenizer is None:
        raise APIError(400, "this server was started with --skip-tokenizer-init")
    vocab = engine.cfg.vocab_size
    batch = req.tokens if req.tokens and isinstance(req.tokens[0], list) else [req.tokens]
    if any(not 0 <= t < vocab for seq in batch for t in seq):  # type: ignore[union-attr]
        raise APIError(400, f"token ids must be in [0, {vocab})", param="tokens")
    texts = [engine.tokenizer.decode(seq, skip_special_tokens=req.skip_special_tokens) for seq in batch]
    nested = bool(req.tokens) and isinstance(req.tokens[0], list)
    return JSONResponse({"text": texts if nested else texts[0]})
