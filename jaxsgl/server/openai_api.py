"""OpenAI-compatible API: GET /v1/models, POST /v1/completions and /v1/chat/completions (stream, n, logprobs)."""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from jaxsgl.server.errors import APIError, error_body, parse_body
from jaxsgl.server.formatting import (SSE_DONE, chat_logprobs, completion_logprobs, dumps, echo_completion_logprobs,
                                      finish_reason, matched_stop, sse, usage)
from jaxsgl.server.generation import (ENGINE_SAMPLING_FIELDS, ClientDisconnected, GenItem, engine_sampling_params,
                                      generate_all)
from jaxsgl.server.protocol import ChatCompletionRequest, CompletionRequest, OpenAISampling
from jaxsgl.server.state import ServerState
from jaxsgl.server.streaming import Streams, open_streams
from jaxsgl.tokenizer import chat_prompt_ids

router = APIRouter()
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def _state(request: Request) -> ServerState:
    return request.app.state.server


@router.get("/v1/models")
async def models(request: Request) -> JSONResponse:
    state = _state(request)
    engine = state.require_engine()
    card = {"id": state.model_name, "object": "model", "created": int(state.started), "owned_by": "jaxsgl",
            "root": str(engine.model_dir), "max_model_len": engine.context_len}
    return JSONResponse({"object": "list", "data": [card]})


@router.get("/v1/models/{model_id:path}")
async def model(model_id: str, request: Request) -> JSONResponse:
    state = _state(request)
    engine = state.require_engine()
    state.check_model(model_id)
    return JSONResponse({"id": model_id, "object": "model", "created": int(state.started), "owned_by": "jaxsgl",
                         "root": str(engine.model_dir), "max_model_len": engine.context_len})


def sampling_params(req: OpenAISampling, max_new_tokens: int) -> dict[str, Any]:
    """OpenAI request fields -> the engine's sampling params (SGLang names; raises APIError 400)."""
    p: dict[str, Any] = {"max_new_tokens": max_new_tokens, "n": req.n}
    for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty", "frequency_penalty",
                 "repetition_penalty", "seed", "ignore_eos", "stop", "stop_token_ids", "skip_special_tokens",
                 "regex", "ebnf"):
        if getattr(req, name) is not None:
            p[name] = getattr(req, name)
    if req.min_tokens:
        p["min_new_tokens"] = req.min_tokens
    fmt = req.response_format
    if fmt is not None and fmt.type != "text":
        if "json_schema" not in ENGINE_SAMPLING_FIELDS:
            raise APIError(400, f"response_format {fmt.type!r} needs constrained decoding, which this build of "
                                "jaxsgl does not have yet", param="response_format")
        if fmt.json_schema is not None:
            p["json_schema"] = json.dumps(fmt.json_schema.schema_)
        else:
            p["json_schema"] = json.dumps({"type": "object"})
    return engine_sampling_params(p, "request")


def _rid(req: OpenAISampling, i: int, k: int) -> str:
    if req.rid is None:
        return uuid.uuid4().hex
    return req.rid if k == 1 else f"{req.rid}-{i}"


# --------------------------------------------------------------------------- /v1/completions
@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = _state(request)
    req = await parse_body(request, CompletionRequest)
    engine = state.require_engine()
    state.check_model(req.model)
    p = req.prompt
    prompts: list[tuple[str | None, list[int] | None]]
    if isinstance(p, str):
        prompts = [(p, None)]
    elif p and isinstance(p[0], int):
        prompts = [(None, p)]  # type: ignore[list-item]
    else:
        prompts = [(x, None) if isinstance(x, str) else (None, x) for x in p]  # type: ignore[union-attr]
    max_tokens = COMPLETIONS_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
    params = sampling_params(req, max_tokens)
    want_lp = req.logprobs is not None
    echo_lp = want_lp and req.echo  # the prompt's logprobs too (scoring: max_tokens=0)
    items = [GenItem(text=t, input_ids=ids, params=params, return_logprob=want_lp, top_logprobs_num=req.logprobs or 0,
                     logprob_start_len=0 if echo_lp else None, rid=_rid(req, i, len(prompts)))
             for i, (t, ids) in enumerate(prompts)]
    if any(it.text is None for it in items) and any(it.input_ids is None for it in items):
        tok = engine.tokenizer
        for it in items:
            if it.input_ids is None:
                it.input_ids, it.text = tok.encode(it.text), None
    echo = [(t if t is not None else engine.tokenizer.decode(ids)) if req.echo else "" for t, ids in prompts]
    echo = [e for e in echo for _ in range(req.n)]
    cid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        try:
            merged = await open_streams(state, request, items)
        except ClientDisconnected:
            return Response(status_code=499)
        return StreamingResponse(_completion_stream(engine, merged, req, cid, created, echo),
                                 media_type="text/event-stream")
    try:
        results = await generate_all(state, request, items)
    except ClientDisconnected:
        return Response(status_code=499)
    choices = []
    for j, r in enumerate(results):
        meta = r["meta_info"]
        choices.append({"index": j, "text": echo[j] + r["text"], "finish_reason": finish_reason(meta),
                        "matched_stop": matched_stop(meta),
                        "logprobs": echo_completion_logprobs(meta, engine.tokenizer) if echo_lp else
                        completion_logprobs(meta, engine.tokenizer, 0, len(echo[j])) if want_lp else None})
    return JSONResponse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                         "choices": choices, "usage": usage([r["meta_info"] for r in results], req.n)})


async def _completion_stream(engine: Any, streams: Streams, req: CompletionRequest, cid: str, created: int,
                             echo: list[str]) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    metas: dict[int, dict[str, Any]] = {}
    sent_lp: dict[int, int] = {}
    offset: dict[int, int] = {}
    head = '{"id":%s,"object":"text_completion","created":%d,"model":%s,"choices":[' % (
        dumps(cid), created, dumps(req.model))  # = sse(chunk)'s bytes, the constant part encoded once
    tail = ']' + (',"usage":null' if include_usage else '') + '}'
    try:
        async for batch in streams:
            parts = []
            for i, inc in batch:
                meta = inc["meta_info"]
                text = inc["text"]
                if i not in metas:
                    text = echo[i] + text
                metas[i] = meta
                lp = None
                if req.logprobs is not None:
                    lp = completion_logprobs(meta, engine.tokenizer, sent_lp.get(i, 0), offset.get(i, len(echo[i])))
                    sent_lp[i] = len(meta.get("output_token_logprobs", []))
                    offset[i] = offset.get(i, len(echo[i])) + sum(len(t) for t in lp["tokens"])
                choice = {"index": i, "text": text, "logprobs": lp, "finish_reason": finish_reason(meta),
                          "matched_stop": matched_stop(meta)}
                parts.append(f"data: {head}{dumps(choice)}{tail}\n\n")
            yield "".join(parts).encode()
        if include_usage:
            yield sse({"id": cid, "object": "text_completion", "created": created, "model": req.model,
                       "choices": [], "usage": usage([metas[i] for i in sorted(metas)], req.n)})
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
        yield sse(error_body(500, str(e)))
    finally:
        await streams.aclose()
    yield SSE_DONE


# --------------------------------------------------------------------------- /v1/chat/completions
@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = _state(request)
    req = await parse_body(request, ChatCompletionRequest)
    engine = state.require_engine()
    state.check_model(req.model)
    if engine.tokenizer is None:
        raise APIError(400, "chat needs a tokenizer; this server was started with --skip-tokenizer-init")
    try:
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        ids = chat_prompt_ids(engine.tokenizer, messages)
    except ValueError as e:
        raise APIError(400, str(e), param="messages") from None
    except Exception as e:  # noqa: BLE001 - a template that rejects these messages (jinja raise_exception)
        raise APIError(400, f"the chat template rejected the messages: {e}", param="messages") from None
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if max_tokens is None:
        max_tokens = max(engine.context_len - len(ids), 0)
    params = sampling_params(req, max_tokens)
    item = GenItem(input_ids=ids, params=params, return_logprob=req.logprobs,
                   top_logprobs_num=req.top_logprobs or 0, rid=_rid(req, 0, 1))
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    if req.stream:
        try:
            merged = await open_streams(state, request, [item])
        except ClientDisconnected:
            return Response(status_code=499)
        return StreamingResponse(_chat_stream(engine, merged, req, cid, created), media_type="text/event-stream")
    try:
        results = await generate_all(state, request, [item])
    except ClientDisconnected:
        return Response(status_code=499)
    choices = []
    for j, r in enumerate(results):
        meta = r["meta_info"]
        choices.append({"index": j, "message": {"role": "assistant", "content": r["text"]},
                        "logprobs": chat_logprobs(meta, engine.tokenizer, 0) if req.logprobs else None,
                        "finish_reason": finish_reason(meta), "matched_stop": matched_stop(meta)})
    return JSONResponse({"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                         "choices": choices, "usage": usage([r["meta_info"] for r in results], req.n)})


async def _chat_stream(engine: Any, streams: Streams, req: ChatCompletionRequest, cid: str,
                       created: int) -> AsyncIterator[bytes]:
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    metas: dict[int, dict[str, Any]] = {}
    sent_lp: dict[int, int] = {}
    head = '{"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,"choices":[' % (
        dumps(cid), created, dumps(req.model))  # = sse(chunk)'s bytes, the constant part encoded once
    tail = ']' + (',"usage":null' if include_usage else '') + '}'

    def chunk(i: int, delta: dict[str, Any], reason: str | None = None, lp: Any = None, matched: Any = None) -> str:
        c: dict[str, Any] = {"index": i, "delta": delta, "logprobs": lp, "finish_reason": reason}
        if reason is not None:
            c["matched_stop"] = matched
        return f"data: {head}{dumps(c)}{tail}\n\n"

    try:
        async for batch in streams:
            parts = []
            for i, inc in batch:
                meta = inc["meta_info"]
                if i not in metas:
                    parts.append(chunk(i, {"role": "assistant", "content": ""}))
                metas[i] = meta
                lp = None
                if req.logprobs:
                    lp = chat_logprobs(meta, engine.tokenizer, sent_lp.get(i, 0))
                    sent_lp[i] = len(meta.get("output_token_logprobs", []))
                if inc["text"] or (lp and lp["content"]):
                    parts.append(chunk(i, {"content": inc["text"]}, lp=lp))
                if finish_reason(meta) is not None:
                    parts.append(chunk(i, {}, finish_reason(meta), matched=matched_stop(meta)))
            if parts:
                yield "".join(parts).encode()
        if include_usage:
            yield sse({"id": cid, "object": "chat.completion.chunk", "created": created, "model": req.model,
                       "choices": [], "usage": usage([metas[i] for i in sorted(metas)], req.n)})
    except Exception as e:  # noqa: BLE001 - headers are sent: report in-band
        yield sse(error_body(500, str(e)))
    finally:
        await streams.aclose()
    yield SSE_DONE
