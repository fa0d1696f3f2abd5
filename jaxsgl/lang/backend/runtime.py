"""The local backend: programs talk to an in-process jaxsgl Engine (or anything with its generate API).

`RuntimeBackend` needs only `engine.generate(prompt=..., input_ids=..., sampling_params=...,
return_logprob=..., logprob_start_len=..., top_logprobs_num=..., stream=...)` returning SGLang-style
dicts, and `engine.tokenizer`; an HTTP client for the native /generate endpoint can reuse it as is.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

from jaxsgl.lang.backend.base import BaseBackend
from jaxsgl.lang.chat_template import ChatTemplate, get_chat_template
from jaxsgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from jaxsgl.lang.ir import SamplingParams


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def stream_is_incremental(engine: Any) -> bool:
    """Whether engine.generate(stream=True) yields new text per chunk rather than all text so far.

    SGLang's server argument `incremental_streaming_output` says so where the engine exposes it;
    otherwise jaxsgl's Engine streams increments and SGLang's Engine streams cumulative text.
    """
    for obj in (engine, getattr(engine, "options", None), getattr(engine, "server_args", None)):
        value = getattr(obj, "incremental_streaming_output", None)
        if value is not None:
            return bool(value)
    return type(engine).__module__.startswith("jaxsgl.")


class RuntimeBackend(BaseBackend):
    """Backend over an engine object with jaxsgl.Engine's (= SGLang Engine's) generate()."""

    def __init__(self, engine: Any):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat_template = get_chat_template(self.tokenizer)
        self.incremental_stream = stream_is_incremental(engine)

    def get_chat_template(self) -> Optional[ChatTemplate]:
        return self.chat_template

    def encode(self, text: str) -> list[int]:
        """Token ids of text, tokenized as the engine tokenizes a prompt string."""
        enc = getattr(self.engine, "encode", None)
        if callable(enc):
            return list(enc(text))
        return list(self.tokenizer.encode(text))

    def _request(self, prompt: str, sp: SamplingParams, stream: bool = False) -> Any:
        kwargs: dict[str, Any] = {}
        if sp.return_logprob:
            kwargs["return_logprob"] = True
            if sp.logprob_start_len is not None:
                kwargs["logprob_start_len"] = sp.logprob_start_len
            if sp.top_logprobs_num:
                kwargs["top_logprobs_num"] = sp.top_logprobs_num
        params = {**sp.to_engine_dict(), **sp.constraint_dict()}
        if stream:
            kwargs["stream"] = True
        return self.engine.generate(prompt=prompt, sampling_params=params, **kwargs)

    def generate(self, prompt: str, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        out = self._request(prompt, sampling_params)
        if isinstance(out, list):  # n > 1
            return [o["text"] for o in out], out[0]["meta_info"]
        return out["text"], out["meta_info"]

    def generate_stream(self, prompt: str, sampling_params: SamplingParams) -> Iterator[tuple[str, dict]]:
        seen = 0
        for chunk in self._request(prompt, sampling_params, stream=True):
            text = chunk["text"]
            if self.incremental_stream:
                delta = text
            else:  # cumulative text so far (SGLang's default)
                delta, seen = text[seen:], len(text)
            yield delta, chunk.get("meta_info", {})

    def select(self, prompt: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score all choices in one batched prefill-only call that starts logprobs where they differ.

        Tokens shared with the tokenized prompt come from the prefix cache; a choice that merges with
        the prompt's last token (token healing) is scored from the merged token on.
        """
        prefix_ids = self.encode(prompt)
        fulls = [self.encode(prompt + c) for c in choices]
        starts = []
        for ids in fulls:
            start = common_prefix_len(prefix_ids, ids)
            starts.append(max(min(start, len(ids) - 1), 0))
        outs = self.engine.generate(input_ids=fulls, sampling_params={"max_new_tokens": 0, "temperature": 0.0},
                                    return_logprob=True, logprob_start_len=starts)
        inputs = []
        for ids, start, out in zip(fulls, starts, outs):
            entries = list(out["meta_info"]["input_token_logprobs"])
            entries = entries[len(entries) - (len(ids) - start):]
            inputs.append([e for e in entries if e[0] is not None] or entries)
        normalized = [mean_logprob(x) for x in inputs]
        outputs = [list(o["meta_info"].get("output_token_logprobs", [])) for o in outs]
        uncond = None
        if choices_method.requires_unconditional_logprobs:
            own = [[int(e[1]) for e in x] for x in inputs]
            outs2 = self.engine.generate(input_ids=own, sampling_params={"max_new_tokens": 0, "temperature": 0.0},
                                         return_logprob=True, logprob_start_len=0)
            uncond = [list(o["meta_info"]["input_token_logprobs"])[-len(ids):] for o, ids in zip(outs2, own)]
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                              input_token_logprobs=inputs, output_token_logprobs=outputs,
                              unconditional_token_logprobs=uncond)

    def cache_prefix(self, prompt: str) -> None:
        if prompt:
            self.engine.generate(prompt=prompt, sampling_params={"max_new_tokens": 0})

    def get_server_info(self) -> dict[str, Any]:
        info = getattr(self.engine, "get_server_info", None)
        return dict(info()) if callable(info) else {}

    def cache_stats(self) -> dict[str, Any]:
        stats = getattr(self.engine, "cache_stats", None)
        return dict(stats()) if callable(stats) else self.get_server_info()

    def flush_cache(self) -> bool:
        flush = getattr(self.engine, "flush_cache", None)
        if not callable(flush):
            return False
        flush()
        return True

    def shutdown(self) -> None:
        stop = getattr(self.engine, "shutdown", None)
        if callable(stop):
            stop()


class Runtime:
    """An in-process engine plus its backend: `sgl.set_default_backend(sgl.Runtime())`.

    model_path None loads the embedded default model; engine_options go to jaxsgl.Engine
    (disable_radix_cache, page_size, schedule_policy, dtype, random_seed, ...).
    """

    def __init__(self, model_path: Optional[str] = None, *, engine: Any = None, **engine_options: Any):
        if engine is None:
            from jaxsgl.engine.engine import Engine  # imports JAX; only here

            engine = Engine(model_path=model_path, **engine_options)
        self.engine = engine
        self.endpoint = RuntimeBackend(engine)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """engine.generate, unchanged."""
        return self.engine.generate(*args, **kwargs)

    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def get_server_info(self) -> dict[str, Any]:
        return self.endpoint.get_server_info()

    def cache_stats(self) -> dict[str, Any]:
        return self.endpoint.cache_stats()

    def flush_cache(self) -> bool:
        return self.endpoint.flush_cache()

    def shutdown(self) -> None:
        self.endpoint.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def as_backend(obj: Any) -> BaseBackend:
    """A BaseBackend for a backend, a Runtime (its endpoint) or a bare engine object."""
    if obj is None:
        raise ValueError("no backend: call sgl.set_default_backend(sgl.Runtime()) or pass backend=")
    if isinstance(obj, BaseBackend):
        return obj
    endpoint = getattr(obj, "endpoint", None)
    if isinstance(endpoint, BaseBackend):
        return endpoint
    if hasattr(obj, "generate") and hasattr(obj, "tokenizer"):
        return RuntimeBackend(obj)
    raise TypeError(f"{type(obj).__name__} is not a backend (expected BaseBackend, Runtime or Engine)")
