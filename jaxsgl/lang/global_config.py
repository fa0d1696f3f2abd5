"""Process-wide frontend settings (SGLang's global_config, the parts that apply here)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class GlobalConfig:
    default_backend: Any = None
    # run_batch traces the program and pre-caches its constant prefix (if longer than this many chars).
    enable_precache_with_tracing: bool = True
    precache_min_chars: int = 64
    # fork(n > 1) first prefills and caches the shared text once (the frontend hint), when at least
    # this many of its chars are new to the engine (not a prompt or output it already processed).
    enable_fork_hint: bool = True
    fork_hint_min_new_chars: int = 16
    verbosity: int = 0
    # SGLang's names, kept so programs that set them run; jaxsgl's servers use these defaults.
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True
    # SGLang joins forks in mode "concate_and_append" by concatenating their KV caches where the backend
    # can (support_concate_and_append); no jaxsgl backend can yet, so the join appends the text.
    enable_parallel_encoding: bool = True


global_config = GlobalConfig()
