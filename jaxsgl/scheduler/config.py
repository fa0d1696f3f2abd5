"""SchedulerConfig: every scheduling knob, with SGLang's names where they exist."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SchedulerConfig:
    """Knobs of the Scheduler.

    Admission: each step admits waiting requests (in policy order) while
      - running requests < max_running_requests,
      - prefill tokens this step <= prefill budget = min(max_prefill_tokens, chunked_prefill_size),
      - free + evictable pages cover the admitted prompt plus a decode headroom of
        new_token_ratio * min(max_new_tokens, clip_max_new_tokens) tokens per request
        (running requests keep their own headroom reserved).
    new_token_ratio starts at init_new_token_ratio, decays by new_token_ratio_decay per
    decode step down to min_new_token_ratio, and is reset after a retraction.
    Chunked prefill: chunked_prefill_size None or <= 0 turns it off (a prompt longer than
      the budget is then prefilled whole, alone in its step).
    Fairness: a request waiting >= max_wait_steps steps (or max_wait_seconds since arrival)
      is considered before every policy-ordered request. None disables a bound.
    Prefix de-duplication: a request sharing >= dedup_min_tokens not-yet-cached tokens
      with a request being prefilled is held until that prefix is cached.
    mixed_batches: decode and prefill sequences in one step; False = prefill steps first,
      decode steps only when no prefill work is left (SGLang's default loop).
    retract_insert: retracted requests insert their computed KV into the radix cache
      (evictable, so it is only recomputed if evicted); False frees it outright.
    """

    schedule_policy: str = "fcfs"
    max_running_requests: int = 256
    max_prefill_tokens: int = 8192
    chunked_prefill_size: int | None = 4096
    max_context_len: int | None = None
    init_new_token_ratio: float = 0.7
    min_new_token_ratio: float = 0.1
    new_token_ratio_decay: float = 0.001
    clip_max_new_tokens: int = 4096
    max_wait_steps: int | None = 1000
    max_wait_seconds: float | None = None
    enable_prefix_dedup: bool = True
    dedup_min_tokens: int = 32
    mixed_batches: bool = True
    retract_insert: bool = True
    random_seed: int = 0
    trace_capacity: int = 100_000  # per-step trace records kept (a ring buffer: the oldest are dropped)

    def __post_init__(self) -> None:
        if self.max_running_requests < 1:
            raise ValueError(f"max_running_requests must be >= 1, got {self.max_running_requests}")
        if self.max_prefill_tokens < 1:
            raise ValueError(f"max_prefill_tokens must be >= 1, got {self.max_prefill_tokens}")
        if not 0.0 <= self.min_new_token_ratio <= self.init_new_token_ratio <= 1.0:
            raise ValueError("need 0 <= min_new_token_ratio <= init_new_token_ratio <= 1")

    @property
    def chunking(self) -> bool:
        return bool(self.chunked_prefill_size and self.chunked_prefill_size > 0)

    @property
    def prefill_budget(self) -> int:
        """Most prefill tokens in one step."""
        if self.chunking:
            return min(self.max_prefill_tokens, self.chunked_prefill_size)  # type: ignore[type-var]
        return self.max_prefill_tokens
