"""A tiny deterministic stand-in for jaxsgl.Engine: char-level tokens, a hash "model", a prefix cache.

It implements exactly the generate() contract the frontend relies on (SGLang's Engine API), records
every call, and counts prefill tokens the way a radix cache would, so interpreter behaviour (batching,
fork hints, select's single batched call) can be tested in milliseconds.
"""
from __future__ import annotations

import functools
import math
import random
import threading
import time
from typing import Any, Iterator, Optional

ALPHABET = "abcde \n."
VOCAB = 128
CHATML_SYSTEM = "You are a helpful assistant."


class CharTokenizer:
    """One token per character; a ChatML chat template with a default system message."""

    chat_template = "chatml (python)"
    eos_token_id = 3
    eos_token = "\x03"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages: list[dict[str, str]], tokenize: bool = False,
                            add_generation_prompt: bool = False) -> Any:
        out = ""
        for i, m in enumerate(messages):
            if i == 0 and m["role"] != "system":
                out += f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
            out += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
        if add_generation_prompt:
            out += "<|im_start|>assistant\n"
        return self.encode(out) if tokenize else out


@functools.lru_cache(maxsize=100_000)
def next_logprobs(ctx_tail: tuple[int, ...]) -> tuple[float, ...]:
    """log p(next char | last 3 chars): seeded pseudo-random logits, alphabet chars favoured."""
    seed = 17
    for t in ctx_tail:
        seed = (seed * 1_000_003 + t) % (2 ** 32)
    rng = random.Random(seed)
    logits = [rng.gauss(0.0, 1.5) + (3.0 if chr(i) in ALPHABET else 0.0) for i in range(VOCAB)]
    m = max(logits)
    lse = m + math.log(sum(math.exp(x - m) for x in logits))
    return tuple(x - lse for x in logits)


def token_logprob(ids: list[int], pos: int) -> Optional[float]:
    """log p(ids[pos] | ids[:pos]) under the fake model (None at position 0)."""
    if pos == 0:
        return None
    t = ids[pos]
    return next_logprobs(tuple(ids[max(0, pos - 3):pos]))[t] if t < VOCAB else -30.0


class FakeEngine:
    """generate() with SGLang's signature and result dicts; thread-safe; records calls."""

    def __init__(self, step_delay: float = 0.0, disable_radix_cache: bool = False,
                 incremental_streaming_output: bool = False):
        self.incremental_streaming_output = incremental_streaming_output
        self.tokenizer = CharTokenizer()
        self.step_delay = step_delay
        self.disable_radix_cache = disable_radix_cache
        self.calls: list[dict[str, Any]] = []
        self._cached: list[tuple[int, ...]] = []
        self._lock = threading.Lock()
        self.stats = {"prefill_tokens": 0, "hit_tokens": 0, "requests": 0}

    # ---- the Engine API ----
    def generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                 return_logprob: Any = False, logprob_start_len: Any = None, top_logprobs_num: int = 0,
                 stream: bool = False) -> Any:
        single = (prompt is not None and isinstance(prompt, str)) or \
                 (input_ids is not None and (not input_ids or isinstance(input_ids[0], int)))
        ids_list = ([self.tokenizer.encode(p) for p in ([prompt] if single else prompt)] if prompt is not None
                    else ([list(input_ids)] if single else [list(x) for x in input_ids]))
        n = len(ids_list)
        sps = sampling_params if isinstance(sampling_params, list) else [dict(sampling_params or {})] * n
        lps = return_logprob if isinstance(return_logprob, list) else [return_logprob] * n
        starts = logprob_start_len if isinstance(logprob_start_len, list) else [logprob_start_len] * n
        with self._lock:
            self.calls.append({"n": n, "single": single, "stream": stream, "sampling_params": sps[0],
                               "return_logprob": lps[0], "logprob_start_len": logprob_start_len,
                               "prompts": [self.tokenizer.decode(x) for x in ids_list]})
        outs = [self._one(ids, sp, lp, st) for ids, sp, lp, st in zip(ids_list, sps, lps, starts)]
        if stream:
            assert single, "the fake streams single prompts only"
            return self._stream(outs[0])
        return outs[0] if single else outs

    def cache_stats(self) -> dict[str, Any]:
        with self._lock:
            total = self.stats["prefill_tokens"] + self.stats["hit_tokens"]
            return {**self.stats, "hit_rate": self.stats["hit_tokens"] / total if total else 0.0}

    def get_server_info(self) -> dict[str, Any]:
        return self.cache_stats()

    def shutdown(self) -> None:
        pass

    # ---- internals ----
    def _stream(self, out: dict[str, Any]) -> Iterator[dict[str, Any]]:
        ids, sent = out["output_ids"], 0
        for k in range(1, len(ids) + 1):
            time.sleep(self.step_delay)
            text = self.tokenizer.decode(ids[:k]) if k < len(ids) else out["text"]
            if self.incremental_streaming_output:
                text, sent = text[sent:], len(text)
            meta = out["meta_info"] if k == len(ids) else {"finish_reason": None}
            yield {"text": text, "output_ids": ids[:k], "meta_info": meta}

    def _match(self, ids: list[int]) -> int:
        best = 0
        for seq in self._cached:
            k = 0
            while k < min(len(seq), len(ids)) and seq[k] == ids[k]:
                k += 1
            best = max(best, k)
        return best

    def _one(self, ids: list[int], sp: dict[str, Any], return_logprob: bool, start: Optional[int]) -> dict:
        if "<<FAIL>>" in self.tokenizer.decode(ids):
            raise RuntimeError("fake backend failure")
        unknown = set(sp) - {"max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
                             "ignore_eos", "frequency_penalty", "presence_penalty", "n", "seed", "min_new_tokens",
                             "regex", "json_schema", "stop_regex"}  # constraints: recorded, not applied
        if unknown:
            raise ValueError(f"unknown sampling params {sorted(unknown)}")
        max_new = int(sp.get("max_new_tokens", 128))
        temperature = float(sp.get("temperature", 1.0))
        stops = sp.get("stop") or []
        stops = [stops] if isinstance(stops, str) else list(stops)
        rng = random.Random(sp.get("seed", 0))
        out_ids: list[int] = []
        text, finish = "", {"type": "length", "length": max_new}
        for _ in range(max_new):
            lp = next_logprobs(tuple((ids + out_ids)[-3:]))
            if temperature == 0:
                tok = max(range(VOCAB), key=lambda i: lp[i])
            else:
                weights = [math.exp(x / temperature) for x in lp]
                tok = rng.choices(range(VOCAB), weights=weights)[0]
            out_ids.append(tok)
            text = self.tokenizer.decode(out_ids)
            hit = [s for s in stops if s in text]
            if hit:
                text = text[:min(text.index(s) for s in hit)]
                finish = {"type": "stop", "matched": hit[0]}
                break
            if tok in (sp.get("stop_token_ids") or []):
                text = self.tokenizer.decode(out_ids[:-1])
                finish = {"type": "stop", "matched": tok}
                break
        with self._lock:
            matched = 0 if self.disable_radix_cache else self._match(ids)
            if return_logprob and start is not None:
                matched = min(matched, max(start - 1, 0))
            matched = min(matched, max(len(ids) - 1, 0))
            self.stats["prefill_tokens"] += len(ids) - matched
            self.stats["hit_tokens"] += matched
            self.stats["requests"] += 1
            if not self.disable_radix_cache:
                self._cached.append(tuple(ids + out_ids))
        meta: dict[str, Any] = {"prompt_tokens": len(ids), "completion_tokens": len(out_ids),
                                "cached_tokens": matched, "finish_reason": finish, "e2e_latency": 0.0}
        if return_logprob:
            s = 0 if start is None else start
            meta["input_token_logprobs"] = [(token_logprob(ids, p), ids[p], None) for p in range(s, len(ids))]
            full = ids + out_ids
            meta["output_token_logprobs"] = [(token_logprob(full, len(ids) + k), t, None)
                                             for k, t in enumerate(out_ids)]
        return {"text": text, "output_ids": out_ids, "meta_info": meta}


def greedy_continuation(prompt: str, max_new: int) -> str:
    """What FakeEngine generates greedily for prompt (no stop)."""
    ids = [ord(c) for c in prompt]
    out = []
    for _ in range(max_new):
        lp = next_logprobs(tuple((ids + out)[-3:]))
        out.append(max(range(VOCAB), key=lambda i: lp[i]))
    return "".join(chr(i) for i in out)
