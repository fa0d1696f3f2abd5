"""EngineOptions: every Engine knob, with SGLang's server-argument names where they exist."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

GRAMMAR_BACKENDS = ("outlines", "llguidance")  # = jaxsgl.constrained.GRAMMAR_BACKENDS (not imported: no numpy here)


@dataclass
class EngineOptions:
    model_path: str | None = None  # None: the embedded default model
    dtype: str = "auto"  # auto (the checkpoint's) | bfloat16 | float32
    load_format: str = "auto"  # auto | dummy
    kv_cache_dtype: str = "auto"  # auto (= dtype) | bfloat16 | float32
    page_size: int = 16
    max_total_tokens: int | None = None  # KV pool size; None: from accelerator memory, or 16384 on CPU
    mem_fraction_static: float = 0.85  # of accelerator memory for weights + KV
    context_length: int | None = None  # default: the model's max_position_embeddings
    disable_radix_cache: bool = False
    radix_eviction_policy: str = "lru"  # lru | lfu | fifo | mru | priority
    schedule_policy: str = "lpm"  # fcfs | lpm | dfs-weight | random | lof
    max_wait_steps: int | None = 1000  # fairness: a request waiting this long is admitted first
    chunked_prefill_size: int | None = 512  # <= 0 or None: off
    max_prefill_tokens: int = 4096
    max_running_requests: int = 64
    enable_prefix_dedup: bool = True
    attention_backend: str = "auto"  # one of jaxsgl.kernels.ATTENTION_IMPLS
    random_seed: int = 0
    skip_tokenizer_init: bool = False  # no tokenizer: input_ids in, output_ids out (text is "")
    seq_buckets: list[int] | None = None  # padded batch sizes; default powers of two up to max_running_requests
    warmup: bool = False  # compile every (tokens, seqs, pages) bucket of greedy steps before serving
    warmup_sampled: bool = False  # warm-up also compiles the steps of batches with temperature > 0 (no top-k/p/min-p)
    warmup_compile_threads: int | None = None  # warm-up compiles this many variants at once (None: CPU count)
    disable_overlap_schedule: bool = False  # True: read each step back before the next (no overlap; engine/step_loop.py)
    # SGLang's --enable-deterministic-inference: a row's results do not depend on its batch, so greedy tokens
    # are the same with overlap / the radix cache on or off (the layers' row-wise work on fixed blocks of
    # forward.INVARIANT_ROWS tokens, one unsplit attention class, model_runner.DETERMINISTIC_XLA_OPTIONS).
    # Costs throughput (docs/perf.md, session 22).
    enable_deterministic_inference: bool = False
    disable_regex_jump_forward: bool = False  # constrained decoding: decode forced strings token by token
    grammar_max_states: int = 65536  # device grammar tables: automaton states of all resident constraints
    grammar_max_mask_rows: int = 2048  # ... distinct allowed-token bitmask rows (shared across constraints)
    grammar_max_exceptions: int = 1 << 22  # ... transitions that leave a state's default next state
    # Constrained-decoding backend (SGLang's --grammar-backend; its xgrammar is not offered):
    # "outlines": regex / json_schema / choices -> outlines-core token automata masked on the device,
    # with compressed-FSM jump-forward; ebnf -> llguidance. "llguidance": every constraint compiled
    # lazily by llguidance (milliseconds, where outlines-core can take seconds) and masked on the host
    # per step; jump-forward uses llguidance's fast-forward tokens. See docs/constrained.md.
    grammar_backend: str = "outlines"
    # Regex of the whitespace allowed between JSON tokens in json_schema constraints (SGLang's
    # --constrained-json-whitespace-pattern). None: outlines' `[ ]?` (both backends); "": compact JSON.
    constrained_json_whitespace_pattern: str | None = None
    debug_check_integrity: bool = False  # assert cache/scheduler invariants after every step (tests)

    @classmethod
    def from_kwargs(cls, model_path: str | None, kwargs: dict[str, Any]) -> "EngineOptions":
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise ValueError(f"unknown Engine options {sorted(unknown)}; known: {sorted(known)}")
        opts = cls(model_path=model_path, **kwargs)
        if opts.grammar_backend not in GRAMMAR_BACKENDS:
            raise ValueError(f"unknown grammar_backend {opts.grammar_backend!r}; "
                             f"choices: {', '.join(GRAMMAR_BACKENDS)}")
        if opts.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {opts.page_size}")
        chunk = opts.chunked_prefill_size
        if chunk is not None and chunk > 0 and chunk % opts.page_size:
            raise ValueError(f"chunked_prefill_size ({chunk}) must be a multiple of page_size ({opts.page_size})")
        return opts
