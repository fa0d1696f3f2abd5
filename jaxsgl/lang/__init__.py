"""jaxsgl.lang: the SGLang-compatible frontend language (plain Python; never imports JAX)."""
from typing import Any

from jaxsgl.lang.api import (Runtime, assistant, assistant_begin, assistant_end, flush_cache, function, gen,
                             gen_int, gen_string, get_default_backend, get_server_info, image, select,
                             separate_reasoning, set_default_backend, system, system_begin, system_end, user,
                             user_begin, user_end, video)
from jaxsgl.lang.backend import BackendError, BaseBackend, RuntimeBackend, TokenUsage
from jaxsgl.lang.choices import (ChoicesDecision, ChoicesSamplingMethod, greedy_token_selection,
                                 token_length_normalized, unconditional_likelihood_normalized)
from jaxsgl.lang.function import SglFunction
from jaxsgl.lang.global_config import global_config
from jaxsgl.lang.state import ProgramState, ProgramStateGroup

__all__ = [
    "BackendError", "BaseBackend", "ChoicesDecision", "ChoicesSamplingMethod", "OpenAI", "ProgramState",
    "ProgramStateGroup", "Runtime", "RuntimeBackend", "RuntimeEndpoint", "SglFunction", "TokenUsage", "assistant",
    "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int", "gen_string",
    "get_default_backend", "get_server_info", "global_config", "greedy_token_selection", "image", "select",
    "separate_reasoning", "set_default_backend", "system", "system_begin", "system_end", "token_length_normalized",
    "unconditional_likelihood_normalized", "user", "user_begin", "user_end", "video",
]


def __getattr__(name: str) -> Any:
    """RuntimeEndpoint (httpx) and OpenAI (the openai package) load on first use."""
    if name in ("RuntimeEndpoint", "OpenAI"):
        from jaxsgl.lang import backend

        return getattr(backend, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
