"""The one interface every backend implements (local engine now; HTTP / OpenAI-compatible later).

The interpreter only ever calls these methods, always with the program's full text so far
(`prompt`): a backend is stateless with respect to programs.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator, Optional

from jaxsgl.lang.chat_template import ChatTemplate
from jaxsgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod
from jaxsgl.lang.ir import SamplingParams


class BaseBackend(ABC):
    """Generate, stream, select and cache-prefix on behalf of the interpreter."""

    def get_chat_template(self) -> Optional[ChatTemplate]:
        """Renders role blocks; None if the model has no chat template."""
        return None

    @abstractmethod
    def generate(self, prompt: str, sampling_params: SamplingParams) -> tuple[Any, dict[str, Any]]:
        """(completion text, meta_info) for prompt; the text is a list when sampling_params.n > 1."""

    def generate_stream(self, prompt: str, sampling_params: SamplingParams) -> Iterator[tuple[str, dict]]:
        """Yield (new text, meta_info so far) pieces; by default one piece from generate()."""
        yield self.generate(prompt, sampling_params)

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
