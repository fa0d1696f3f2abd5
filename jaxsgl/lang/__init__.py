"""jaxsgl.lang: the SGLang-compatible frontend language (plain Python; never imports JAX)."""
from jaxsgl.lang.api import (Runtime, assistant, assistant_begin, assistant_end, flush_cache, function, gen,
                             gen_int, gen_string, get_default_backend, get_server_info, select,
                             set_default_backend, system, system_begin, system_end, user, user_begin, user_end)
from jaxsgl.lang.backend import BaseBackend, RuntimeBackend
from jaxsgl.lang.choices import (ChoicesDecision, ChoicesSamplingMethod, greedy_token_selection,
                                 token_length_normalized, unconditional_likelihood_normalized)
from jaxsgl.lang.function import SglFunction
from jaxsgl.lang.global_config import global_config
from jaxsgl.lang.state import ProgramState, ProgramStateGroup

__all__ = [
    "BaseBackend", "ChoicesDecision", "ChoicesSamplingMethod", "ProgramState",
    "ProgramStateGroup", "Runtime", "RuntimeBackend", "SglFunction", "assistant", "assistant_begin",
    "assistant_end", "flush_cache", "function", "gen", "gen_int", "gen_string", "get_default_backend",
    "get_server_info", "global_config", "greedy_token_selection", "select", "set_default_backend", "system",
    "system_begin", "system_end", "token_length_normalized", "unconditional_likelihood_normalized", "user",
    "user_begin", "user_end",
]
