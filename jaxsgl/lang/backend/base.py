"""The one interface every backend implements: the in-process engine, SGLang's HTTP API, OpenAI's API.

The interpreter only ever calls these methods, always with the program's full text so far
(`prompt`): a backend is stateless with respect to programs. Chat and multimodal backends also get
a `PromptContext` (the chat messages, the open role, the images) built by the interpreter.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from jaxsgl.lang.chat_template import ChatTemplate
from jaxsgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from jaxsgl.lang.ir import SamplingParams


class BackendError(RuntimeError):
    """A backend call failed (server down, HTTP error, timeout, malformed answer).

    The message names the backend and the request; `status` is the HTTP status where there was one."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


@dataclass
class TokenUsage:
    """API calls and tokens a backend has used (SGLang's `backend.token_usage`, plus `num_api_calls`).

    Updated under a lock by every call the backend makes (run_batch calls come from many threads)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    num_api_calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, prompt_tokens: int, completion_tokens: int, calls: int = 1) -> None:
        """Mutates the counters."""
        with self._lock:
            self.prompt_tokens += int(prompt_tokens or 0)
            self.completion_tokens += int(completion_tokens or 0)
            self.num_api_calls += calls

    def reset(self) -> None:
        """Mutates: every counter back to 0."""
        with self._lock:
            self.prompt_tokens = self.completion_tokens = self.num_api_calls = 0

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"num_api_calls": self.num_api_calls, "prompt_tokens": self.prompt_tokens,
                    "completion_tokens": self.completion_tokens}


@dataclass
class PromptContext:
    """What a chat or multimodal backend needs besides the text.

    messages: the finished chat messages (OpenAI format; content is a list of parts when the
    message holds images); role: the open role block, if any; at_role_start: the text ends right
    after that role's prefix (a chat API can only answer there); images: every image/video part
    in the program so far."""

    messages: list[dict[str, Any]]
    role: Optional[str] = None
    at_role_start: bool = False
    images: list[dict[str, Any]] = field(default_factory=list)


class BaseBackend(ABC):
    """Generate, stream, select and cache-prefix on behalf of the interpreter."""

    is_chat_model: bool = False  # answers chat messages, cannot continue a partial assistant turn
    supports_vision: bool = False  # accepts image / video parts
    support_concate_and_append: bool = False  # can join forked KV caches without recomputing them
    api_spec_mode: Optional[str] = None  # "completion" / "chat": honours @function(num_api_spec_tokens=)

    @property
    def token_usage(self) -> TokenUsage:
        """Counters of the API calls and tokens this backend has used (created on first use)."""
        usage = self.__dict__.get("_token_usage")
        if usage is None:
            usage = self.__dict__.setdefault("_token_usage", TokenUsage())
        return usage

    @property
    def endpoint(self) -> "BaseBackend":
        """The backend itself (SGLang code reads `backend.endpoint` of a Runtime or a backend alike)."""
        return self

    def get_model_name(self) -> str:
        return type(self).__name__

    def describe(self) -> str:
        """How error messages name this backend."""
        return f"{type(self).__name__}({self.get_model_name()!r})"

    def get_chat_template(self) -> Optional[ChatTemplate]:
        """Renders role blocks; None if the model has no chat template."""
        return None

    @abstractmethod
    def generate(self, prompt: str, sampling_params: SamplingParams,
                 context: Optional[PromptContext] = None) -> tuple[Any, dict[str, Any]]:
        """(completion text, meta_info) for prompt; the text is a list when sampling_params.n > 1."""

    def generate_stream(self, prompt: str, sampling_params: SamplingParams,
                        context: Optional[PromptContext] = None) -> Iterator[tuple[str, dict]]:
        """Yield (new text, meta_info so far) pieces; by default one piece from generate()."""
        yield self.generate(prompt, sampling_params, context)

    def generate_speculative(self, prompt: str, sampling_params: SamplingParams, max_tokens: int,
                             context: Optional[PromptContext] = None) -> dict[str, Any]:
        """API speculative execution: max_tokens tokens ignoring stop strings.

        Returns {"text", "pieces" (token texts joining to text, or None if unknown), "finished"
        (it ended by itself, not at max_tokens)}. Only backends with an api_spec_mode implement it."""
        raise NotImplementedError(f"{self.describe()} does not do API speculative execution")

    @abstractmethod
    def select(self, prompt: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        """Score every prompt + choice continuation and let choices_method decide."""

    def cache_prefix(self, prompt: str) -> None:
        """Hint: prefill prompt and keep it cached (fork points, run_batch's traced prefix)."""

    def commit_lazy_operations(self, prompt: str) -> None:
        """Hint before a fork: the shared text so far will be extended by several branches."""
        self.cache_prefix(prompt)

    def end_program(self, executor: Any) -> None:
        """Called when a program (or a forked branch) finishes."""

    def get_server_info(self) -> dict[str, Any]:
        return {}

    def flush_cache(self) -> bool:
        return False

    def shutdown(self) -> None:
        pass
