"""The local backend: programs talk to an in-process jaxsgl Engine (or anything with its generate API).

`RuntimeBackend` needs only `engine.generate(prompt=..., input_ids=..., sampling_params=...,
return_logprob=..., logprob_start_len=..., top_logprobs_num=..., stream=...)` returning SGLang-style
dicts, and `engine.tokenizer`; an HTTP client for the native /generate endpoint can reuse it as is.
"""
from __future__ import annotations

from typing import Any, AsyncIterator, Iterator, Optional

from jaxsgl.lang.backend.base import BaseBackend, PromptContext
from jaxsgl.lang.chat_template import ChatTemplate, get_chat_template, resolve_chat_template
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

    def __init__(self, engine: Any, chat_template: Any = None):
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.chat_template = resolve_chat_template(chat_template) or get_chat_template(self.tokenizer)
        self.incremental_stream = stream_is_incremental(engine)

    def get_chat_template(self) -> Optional[ChatTemplate]:
        return self.chat_template

    def get_model_name(self) -> str:
        for obj, attr in ((getattr(self.engine, "options", None), "model_path"), (self.engine, "model_dir")):
            value = getattr(obj, attr, None)
            if value:
                return str(value)
        return type(self.engine).__name__

    def encode(self, text: str) -> list[int]:
        """Token ids of text, tokenized as the engine tokenizes a prompt string."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids of several texts (one call where the engine can batch them)."""
        batch = getattr(self.engine, "encode_batch", None)
        if callable(batch):
            return [list(x) for x in batch(texts)]
        enc = getattr(self.engine, "encode", None)
        if callable(enc):
            return [list(enc(t)) for t in texts]
        return [list(self.tokenizer.encode(t)) for t in texts]

    def _request(self, prompt: str, sp: SamplingParams, stream: bool = False,
                 context: Optional[PromptContext] = None) -> Any:
        kwargs: dict[str, Any] = {}
        if context is not None and context.images and self.supports_vision:
            kwargs["image_data"] = [p.get("image_url", p.get("video_url", {})).get("url") for p in context.images]
        if sp.return_logprob:
            kwargs["return_logprob"] = True
            if sp.logprob_start_len is not None:
                kwargs["logprob_start_len"] = sp.logprob_start_len
            if sp.top_logprobs_num:
                kwargs["top_logprobs_num"] = sp.top_logprobs_num
        params = {**sp.to_engine_dict(), **sp.constraint_dict()}
        if stream:
            kwargs["stream"] = True
        return self._generate(prompt=prompt, sampling_params=params, **kwargs)

    def _generate(self, **kwargs: Any) -> Any:
        """engine.generate, the call and its tokens counted in token_usage."""
        out = self.engine.generate(**kwargs)
        if kwargs.get("stream"):
            return self._counted(out)
        metas = [o.get("meta_info") or {} for o in (out if isinstance(out, list) else [out])]
        self.token_usage.add(sum(m.get("prompt_tokens") or 0 for m in metas),
                             sum(m.get("completion_tokens") or 0 for m in metas))
        return out

    def _counted(self, chunks: Iterator[dict]) -> Iterator[dict]:
        meta: dict[str, Any] = {}
        try:
            for chunk in chunks:
                meta = chunk.get("meta_info") or meta
                yield chunk
        finally:
            self.token_usage.add(meta.get("prompt_tokens") or 0, meta.get("completion_tokens") or 0)

    def generate(self, prompt: str, sampling_params: SamplingParams,
                 context: Optional[PromptContext] = None) -> tuple[Any, dict[str, Any]]:
        out = self._request(prompt, sampling_params, context=context)
        if isinstance(out, list):  # n > 1
            return [o["text"] for o in out], out[0]["meta_info"]
        return out["text"], out["meta_info"]

    def generate_stream(self, prompt: str, sampling_params: SamplingParams,
                        context: Optional[PromptContext] = None) -> Iterator[tuple[str, dict]]:
        seen = 0
        for chunk in self._request(prompt, sampling_params, stream=True, context=context):
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
        prefix_ids, *fulls = self.encode_batch([prompt] + [prompt + c for c in choices])
        starts = []
        for ids in fulls:
            start = common_prefix_len(prefix_ids, ids)
            starts.append(max(min(start, len(ids) - 1), 0))
        outs = self._generate(input_ids=fulls, sampling_params={"max_new_tokens": 0, "temperature": 0.0},
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
            outs2 = self._generate(input_ids=own, sampling_params={"max_new_tokens": 0, "temperature": 0.0},
                                   return_logprob=True, logprob_start_len=0)
            uncond = [list(o["meta_info"]["input_token_logprobs"])[-len(ids):] for o, ids in zip(outs2, own)]
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                              input_token_logprobs=inputs, output_token_logprobs=outputs,
                              unconditional_token_logprobs=uncond)

    def cache_prefix(self, prompt: str) -> None:
        if prompt:
            self._generate(prompt=prompt, sampling_params={"max_new_tokens": 0})

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

    SGLang's Runtime launches a server process; jaxsgl's runs the engine in this process and serves
    it over HTTP only when asked (`port=` or `serve()`), after which `url` is set and
    `sgl.RuntimeEndpoint(runtime.url)` reaches the same engine. model_path None loads the embedded
    default model; engine_options go to jaxsgl.Engine (disable_radix_cache, page_size, dtype, ...);
    engine= wraps an existing Engine (then shutdown() leaves it running).
    """

    def __init__(self, model_path: Optional[str] = None, *, engine: Any = None, port: Optional[int] = None,
                 host: str = "127.0.0.1", log_level: str = "error", launch_timeout: float = 300.0,
                 **engine_options: Any):
        self._owns_engine = engine is None
        if engine is None:
            from jaxsgl.engine.engine import Engine  # imports JAX; only here

            engine = Engine(model_path=model_path, **engine_options)
        self.engine = engine
        self.endpoint = RuntimeBackend(engine)
        self.url: Optional[str] = None
        self.generate_url: Optional[str] = None
        self._server: Any = None
        self._server_thread: Any = None
        self._state: Any = None
        if port is not None:
            self.serve(port=port, host=host, log_level=log_level, timeout=launch_timeout)

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def serve(self, port: int = 0, host: str = "127.0.0.1", log_level: str = "error", timeout: float = 120.0) -> str:
        """Serve this engine with jaxsgl's HTTP server (SGLang's native API + OpenAI's) on a thread.

        port 0 picks a free port. Mutates url / generate_url; returns url."""
        import socket
        import threading
        import time
        import urllib.request

        import uvicorn

        from jaxsgl.server.app import create_app
        from jaxsgl.server.state import ServerConfig, ServerState

        if self._server is not None:
            return str(self.url)
        if not port:
            with socket.socket() as sock:
                sock.bind((host, 0))
                port = sock.getsockname()[1]
        state = self._state = ServerState(ServerConfig(host=host, port=port, model_path=self.get_model_name()))
        self._server = uvicorn.Server(uvicorn.Config(create_app(state), host=host, port=port, log_level=log_level,
                                                     lifespan="on"))
        self._server_thread = threading.Thread(target=self._server.run, name="jaxsgl-runtime-http", daemon=True)
        self._server_thread.start()
        state.load(lambda: self.engine)
        url = f"http://{host}:{port}"
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or not self._server_thread.is_alive():
                raise RuntimeError(f"the HTTP server for this Runtime did not come up on {url} in {timeout}s")
            time.sleep(0.1)
        self.url, self.generate_url = url, url + "/generate"
        return url

    def get_model_name(self) -> str:
        return self.endpoint.get_model_name()

    def generate(self, prompt: Any, sampling_params: Optional[dict] = None, return_logprob: Any = False,
                 logprob_start_len: Any = None, top_logprobs_num: Any = None, lora_path: Any = None,
                 session_id: Any = None) -> str:
        """SGLang's Runtime.generate: the result as a JSON string (engine.generate has the dicts)."""
        import json

        if lora_path is not None or session_id is not None:
            raise ValueError("lora_path and session_id are not supported by jaxsgl")
        out = self.engine.generate(prompt, sampling_params, return_logprob=return_logprob,
                                   logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num or 0)
        return json.dumps(out)

    async def async_generate(self, prompt: str, sampling_params: Optional[dict] = None,
                             session_id: Any = None) -> AsyncIterator[str]:
        """SGLang's Runtime.async_generate: the new text of one streamed request, piece by piece."""
        if session_id is not None:
            raise ValueError("session_id is not supported by jaxsgl")
        stream = await self.engine.async_generate(prompt, sampling_params, stream=True)
        incremental = self.endpoint.incremental_stream
        seen = 0
        async for chunk in stream:
            text = chunk["text"]
            delta, seen = (text, seen) if incremental else (text[seen:], len(text))
            if delta:
                yield delta

    add_request = async_generate

    def cache_prefix(self, prefix: str) -> None:
        self.endpoint.cache_prefix(prefix)

    def get_server_info(self) -> dict[str, Any]:
        return self.endpoint.get_server_info()

    def cache_stats(self) -> dict[str, Any]:
        return self.endpoint.cache_stats()

    def flush_cache(self) -> bool:
        return self.endpoint.flush_cache()

    def shutdown(self) -> None:
        """Stops the HTTP server (if serving) and the engine (unless it was passed in as engine=)."""
        if self._server is not None:
            self._state.engine = None  # the server's shutdown would stop the engine: the Runtime decides that
            self._server.should_exit = True
            self._server_thread.join(timeout=30)
            self._server = None
            self.url = self.generate_url = None
        if self._owns_engine:
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
