"""Engine results -> response JSON: SGLang's native shape (token texts in logprobs) and OpenAI's pieces."""
from __future__ import annotations

import json
from json.encoder import encode_basestring
from typing import Any

Logprob = tuple[float | None, int, str | None]


# json.dumps(obj, ensure_ascii=False, separators=(",", ":")) with the encoder made once, not per call
dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def sse(obj: Any) -> bytes:
    """One server-sent event: `data: {json}` and a blank line."""
    return b"data: " + dumps(obj).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def token_text(tokenizer: Any, tid: int) -> str:
    return "" if tokenizer is None else tokenizer.decode([tid])


def _with_text(entries: list[Logprob] | None, tokenizer: Any) -> list[list[Any]] | None:
    if entries is None:
        return None
    return [[lp, tid, token_text(tokenizer, tid)] for lp, tid, _ in entries]


def native_result(result: dict[str, Any], tokenizer: Any, text_in_logprobs: bool, top_n: int | None = None,
                  text: str | None = None) -> dict[str, Any]:
    """An engine result as SGLang's /generate answers it (a new dict; the engine's is left alone).

    text_in_logprobs fills the third element of each logprob entry with the token's text; top_n
    trims top-logprob lists (a batch computes the largest count asked for)."""
    meta = dict(result["meta_info"])
    for key in ("input_top_logprobs", "output_top_logprobs"):
        if key in meta and top_n is not None:
            meta[key] = [None if x is None else x[:top_n] for x in meta[key]] if top_n else []
    if text_in_logprobs:
        for key in ("input_token_logprobs", "output_token_logprobs"):
            if key in meta:
                meta[key] = _with_text(meta[key], tokenizer)
        for key in ("input_top_logprobs", "output_top_logprobs"):
            if key in meta:
                meta[key] = [_with_text(x, tokenizer) for x in meta[key]]
    return {"text": result["text"] if text is None else text, "output_ids": result["output_ids"], "meta_info": meta}


def native_meta(meta: dict[str, Any], tokenizer: Any, text_in_logprobs: bool, top_n: int | None) -> dict[str, Any]:
    """native_result's meta_info, without copying it when nothing changes (no logprobs asked for)."""
    if "output_token_logprobs" not in meta and "input_token_logprobs" not in meta:
        return meta
    return native_result({"text": "", "output_ids": None, "meta_info": meta}, tokenizer, text_in_logprobs,
                         top_n)["meta_info"]


class NativeStreamEvents:
    """The SSE events of one choice of a streamed /generate, equal to sse(native_result(inc, ...) with the
    cumulative text, plus "index" for batches): the cumulative text and output_ids are JSON-encoded
    incrementally, so each event encodes its new text and ids only, not the whole output so far."""

    def __init__(self, index: int | None = None) -> None:
        self.tail = b"}\n\n" if index is None else b',"index":%d}\n\n' % index
        self.text = ""  # the cumulative text, JSON-escaped (no quotes): escaping is per character
        self.ids = ""  # the output ids sent so far, comma-separated
        self.num_ids = 0
        self._last: int | None = None  # the last id sent

    def event(self, inc: dict[str, Any], meta: dict[str, Any]) -> bytes:
        """The event of increment inc (its new text; output_ids cumulative) with meta_info meta."""
        if inc["text"]:
            self.text += encode_basestring(inc["text"])[1:-1]
        ids, k = inc["output_ids"], self.num_ids
        if len(ids) < k or (k and ids[k - 1] != self._last):  # rewritten (never expected): start over
            self.ids, k = "", 0
        if len(ids) > k:
            new = ",".join(map(str, ids[k:]))
            self.ids = f"{self.ids},{new}" if k else new
        self.num_ids = len(ids)
        self._last = ids[-1] if ids else None
        return ('data: {"text":"' + self.text + '","output_ids":[' + self.ids + '],"meta_info":' +
                dumps(meta)).encode() + self.tail


def finish_reason(meta: dict[str, Any]) -> str | None:
    """OpenAI's finish_reason: "stop" | "length" | "abort" (SGLang's extra) | None while running."""
    reason = meta.get("finish_reason")
    return None if reason is None else reason.get("type", "stop")


def matched_stop(meta: dict[str, Any]) -> Any:
    reason = meta.get("finish_reason") or {}
    return reason.get("matched")


def usage(metas: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """OpenAI usage over choices (n per prompt: prompt tokens counted once per prompt)."""
    prompt = sum(m["prompt_tokens"] for m in metas[::max(n, 1)])
    cached = sum(m.get("cached_tokens", 0) for m in metas[::max(n, 1)])
    completion = sum(m["completion_tokens"] for m in metas)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def completion_logprobs(meta: dict[str, Any], tokenizer: Any, start: int, text_offset: int) -> dict[str, Any]:
    """OpenAI completions `logprobs` for output tokens [start:] (tokens, token_logprobs, top_logprobs)."""
    entries = meta.get("output_token_logprobs", [])[start:]
    tops = meta.get("output_top_logprobs", [])[start:]
    tokens = [token_text(tokenizer, tid) for _, tid, _ in entries]
    offsets, pos = [], text_offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    out: dict[str, Any] = {"tokens": tokens, "token_logprobs": [lp for lp, _, _ in entries],
                           "text_offset": offsets, "top_logprobs": None}
    if "output_top_logprobs" in meta:
        out["top_logprobs"] = [{token_text(tokenizer, tid): lp for lp, tid, _ in (top or [])} for top in tops]
    return out


def echo_completion_logprobs(meta: dict[str, Any], tokenizer: Any) -> dict[str, Any]:
    """OpenAI completions `logprobs` with echo=True: the prompt's tokens (the first one's logprob is None),
    then the output's, offsets from the start of the echoed prompt (scoring a text: max_tokens=0)."""
    prompt = meta.get("input_token_logprobs", [])
    out = completion_logprobs(meta, tokenizer, 0, 0)
    tokens = [token_text(tokenizer, tid) for _, tid, _ in prompt] + out["tokens"]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    res: dict[str, Any] = {"tokens": tokens, "token_logprobs": [lp for lp, _, _ in prompt] + out["token_logprobs"],
                           "text_offset": offsets, "top_logprobs": None}
    if out["top_logprobs"] is not None:
        tops = meta.get("input_top_logprobs") or [None] * len(prompt)
        res["top_logprobs"] = [None if top is None else {token_text(tokenizer, tid): lp for lp, tid, _ in top}
                               for top in tops] + out["top_logprobs"]
    return res


def chat_logprobs(meta: dict[str, Any], tokenizer: Any, start: int) -> dict[str, Any]:
    """OpenAI chat `logprobs` for output tokens [start:] ({"content": [{token, logprob, bytes, top_logprobs}]})."""
    def item(lp: float, tid: int) -> dict[str, Any]:
        t = token_text(tokenizer, tid)
        return {"token": t, "logprob": lp, "bytes": list(t.encode("utf-8"))}

    entries = meta.get("output_token_logprobs", [])[start:]
    tops = meta.get("output_top_logprobs", [])[start:] if "output_top_logprobs" in meta else [None] * len(entries)
    return {"content": [{**item(lp, tid), "top_logprobs": [item(tlp, ttid) for tlp, ttid, _ in (top or [])]}
                        for (lp, tid, _), top in zip(entries, tops)]}
