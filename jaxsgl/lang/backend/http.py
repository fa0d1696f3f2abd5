"""`sgl.RuntimeEndpoint(url)`: programs against a server speaking SGLang's native HTTP API.

jaxsgl's own server (`python -m jaxsgl.launch_server`) and SGLang's speak the same protocol:
`/get_model_info`, `/generate` (JSON, or SSE `data:` lines of cumulative text then `data: [DONE]`),
`/tokenize`, `/flush_cache`, `/get_server_info`. `HttpEngine` wraps them in the Engine's generate()
contract, so `RuntimeEndpoint` is `RuntimeBackend` over HTTP: a select is one batched prefill-only
`/generate` call over `input_ids` with `return_logprob` and per-choice `logprob_start_len`, exactly as
in process; a fork commits the shared prefix with a `max_new_tokens: 0` request first.

Every failure (server down, an HTTP error, a timeout, an in-band stream error) raises BackendError
naming the endpoint and the request; every call has a timeout, so nothing hangs.
"""
from __future__ import annotations

import json
import os
from typing import Any, Iterator, Optional

import httpx

from jaxsgl.lang.backend.base import BackendError
from jaxsgl.lang.backend.runtime import RuntimeBackend

DEFAULT_TIMEOUT_S = 600.0


def describe_request(body: Any) -> str:
    """A short description of a request body for error messages."""
    if not isinstance(body, dict):
        return ""
    parts = []
    text = body.get("text")
    if isinstance(text, str):
        parts.append(f"text={text[:60]!r}{'...' if len(text) > 60 else ''}")
    elif isinstance(text, list):
        parts.append(f"text=[{len(text)} prompts]")
    ids = body.get("input_ids")
    if ids is not None:
        parts.append(f"input_ids=[{len(ids)} {'prompts' if ids and isinstance(ids[0], list) else 'tokens'}]")
    if body.get("sampling_params") is not None:
        parts.append(f"sampling_params={json.dumps(body['sampling_params'])[:120]}")
    for key in ("return_logprob", "stream"):
        if body.get(key):
            parts.append(f"{key}=True")
    return ", ".join(parts)


class HttpClient:
    """One httpx connection pool (thread-safe) with the API key, a timeout and BackendErrors."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S,
                 verify: Any = True, name: str = "RuntimeEndpoint"):
        self.base_url = base_url.rstrip("/")
        self.name = name
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.client = httpx.Client(base_url=self.base_url, headers=headers, verify=verify if verify is not None
                                   else True, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
                                   limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    def _fail(self, method: str, path: str, body: Any, why: str, status: Optional[int] = None) -> BackendError:
        req = describe_request(body)
        return BackendError(f"{self.name}({self.base_url}): {method} {path} failed: {why}"
                            + (f" [request: {req}]" if req else ""), status)

    def _check(self, res: httpx.Response, method: str, path: str, body: Any) -> None:
        if res.status_code != 200:
            try:
                detail = res.json()
                detail = detail.get("error", {}).get("message", detail) if isinstance(detail, dict) else detail
            except ValueError:
                detail = res.text[:500]
            raise self._fail(method, path, body, f"HTTP {res.status_code}: {detail}", res.status_code)

    def request(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """The response (status 200) of one call; raises BackendError."""
        try:
            res = self.client.request(method, path, json=body)
        except httpx.TimeoutException as e:
            raise self._fail(method, path, body, f"timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise self._fail(method, path, body, f"{type(e).__name__}: {e}") from e
        self._check(res, method, path, body)
        return res

    def post_json(self, path: str, body: Any) -> Any:
        res = self.request("POST", path, body)
        try:
            return res.json()
        except ValueError as e:
            raise self._fail("POST", path, body, f"the answer is not JSON: {res.text[:200]!r}") from e

    def stream_sse(self, path: str, body: Any) -> Iterator[dict[str, Any]]:
        """The JSON objects of a server-sent-event stream, up to `data: [DONE]`; raises BackendError."""
        try:
            with self.client.stream("POST", path, json=body) as res:
                if res.status_code != 200:
                    res.read()
                    self._check(res, "POST", path, body)
                for line in res.iter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    obj = json.loads(data)
                    if isinstance(obj, dict) and "error" in obj and "text" not in obj:
                        err = obj["error"]
                        raise self._fail("POST", path, body, f"error in the stream: "
                                         f"{err.get('message', err) if isinstance(err, dict) else err}")
                    yield obj
        except httpx.TimeoutException as e:
            raise self._fail("POST", path, body, f"timed out ({type(e).__name__})") from e
        except httpx.HTTPError as e:
            raise self._fail("POST", path, body, f"{type(e).__name__}: {e}") from e

    def close(self) -> None:
        self.client.close()


class HttpEngine:
    """SGLang's native HTTP API behind jaxsgl.Engine's generate() contract (what RuntimeBackend calls)."""

    incremental_streaming_output = False  # the SSE stream carries the cumulative text

    def __init__(self, client: HttpClient, tokenizer: Any = None):
        self.client = client
        self.model_info: dict[str, Any] = client.request("GET", "/get_model_info").json()
        self.tokenizer = tokenizer if tokenizer is not None else self._local_tokenizer()

    def _local_tokenizer(self) -> Any:
        """The server's tokenizer, if its directory is readable here (for chat templates and select)."""
        path = self.model_info.get("tokenizer_path") or self.model_info.get("model_path")
        if not path or not os.path.isdir(str(path)):
            return None
        try:
            from jaxsgl.tokenizer import load_tokenizer

            return load_tokenizer(path)
        except Exception:  # noqa: BLE001 - unreadable here: /tokenize and no chat template instead
            return None

    def generate(self, prompt: Any = None, sampling_params: Any = None, input_ids: Any = None,
                 return_logprob: Any = False, logprob_start_len: Any = None, top_logprobs_num: Any = 0,
                 stream: bool = False, image_data: Any = None) -> Any:
        body: dict[str, Any] = {"text": prompt} if input_ids is None else {"input_ids": input_ids}
        if sampling_params is not None:
            body["sampling_params"] = sampling_params
        if return_logprob:
            body["return_logprob"] = return_logprob
            if logprob_start_len is not None:
                body["logprob_start_len"] = logprob_start_len
            if top_logprobs_num:
                body["top_logprobs_num"] = top_logprobs_num
        if image_data:
            body["image_data"] = image_data[0] if len(image_data) == 1 else image_data
        if stream:
            body["stream"] = True
            return self.client.stream_sse("/generate", body)
        return self.client.post_json("/generate", body)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids as the server tokenizes a text prompt (locally when the tokenizer is here)."""
        if self.tokenizer is not None:
            return [list(self.tokenizer.encode(t)) for t in texts]
        return self.client.post_json("/tokenize", {"prompt": list(texts)})["tokens"]

    def get_server_info(self) -> dict[str, Any]:
        try:
            return self.client.request("GET", "/server_info").json()
        except BackendError as e:  # older servers: only the deprecated name
            if e.status != 404:
                raise
            return self.client.request("GET", "/get_server_info").json()

    def flush_cache(self) -> None:
        self.client.request("POST", "/flush_cache")

    def shutdown(self) -> None:
        self.client.close()


class RuntimeEndpoint(RuntimeBackend):
    """`sgl.RuntimeEndpoint(base_url, api_key=None)`: a jaxsgl or SGLang server over its native API.

    The chat template comes from the server's tokenizer when its directory is readable here
    (`/get_model_info`'s tokenizer_path), else from chat_template_name (a tokenizer directory or one of
    "chatml", "llama-3-instruct", "default"); `tokenizer=` overrides both. timeout bounds every call."""

    def __init__(self, base_url: str, api_key: Optional[str] = None, verify: Any = None,
                 chat_template_name: Optional[str] = None, timeout: float = DEFAULT_TIMEOUT_S, tokenizer: Any = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.client = HttpClient(self.base_url, api_key, timeout, verify)
        try:
            engine = HttpEngine(self.client, tokenizer)
        except BaseException:
            self.client.close()
            raise
        self.model_info = engine.model_info
        super().__init__(engine, chat_template=chat_template_name)
        self.supports_vision = bool(self.model_info.get("has_image_understanding"))

    def get_model_name(self) -> str:
        return str(self.model_info.get("model_path"))

    def describe(self) -> str:
        return f"RuntimeEndpoint({self.base_url})"

    def get_server_info(self) -> dict[str, Any]:
        return self.engine.get_server_info()

    def cache_stats(self) -> dict[str, Any]:
        internal = self.get_server_info().get("internal_states") or [{}]
        return dict(internal[0].get("cache", {}))

    def flush_cache(self) -> bool:
        self.engine.flush_cache()
        return True

    def shutdown(self) -> None:
        """Closes the connections (the server keeps running)."""
        self.engine.shutdown()
