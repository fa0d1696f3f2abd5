"""Unbatched generation of one sequence: the bootstrap CLI path and the engine's test oracle.

No radix cache, no scheduler: one sequence owns pages 1..n of a private KV cache,
the prompt is prefilled (optionally in chunks) and then decoded a token at a time.
Sampling happens on the host with numpy.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from jaxsgl.model.config import ModelConfig
from jaxsgl.model.forward import init_kv_cache, make_forward, step_to_device
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import Weights


def _bucket(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def sample_token(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """Greedy when temperature == 0, else temperature + nucleus sampling."""
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    order = np.argsort(-p)
    keep = np.cumsum(p[order]) - p[order] < top_p  # smallest prefix with mass >= top_p
    probs = np.zeros_like(p)
    probs[order[keep]] = p[order[keep]]
    return int(rng.choice(len(p), p=probs / probs.sum()))


def generate_ids(cfg: ModelConfig, weights: Weights, prompt_ids: list[int], max_new_tokens: int, *,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                 eos_ids: Iterable[int] = (), ignore_eos: bool = False, page_size: int = 16,
                 prefill_chunk: int | None = None, attn_impl: str = "reference",
                 kv_dtype=None) -> list[int]:
    """Generated token ids (the stop token included when generation stopped on one)."""
    if not prompt_ids:
        raise ValueError("prompt is empty")
    total = len(prompt_ids) + max_new_tokens
    if total > cfg.max_position_embeddings:
        raise ValueError(f"prompt ({len(prompt_ids)}) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context length {cfg.max_position_embeddings}")
    n_pages = -(-total // page_size)
    pages = list(range(1, n_pages + 1))  # page 0 stays unused
    kv = init_kv_cache(cfg, n_pages + 1, page_size, kv_dtype or weights.embed.dtype)
    fwd = make_forward(cfg, attn_impl=attn_impl)
    rng = np.random.default_rng(seed)
    eos = set(eos_ids)

    def run(new_ids: list[int], cached: int) -> np.ndarray:
        nonlocal kv
        step = make_step_input([(new_ids, cached, pages)], page_size, num_tokens=_bucket(len(new_ids)))
        logits, kv = fwd(weights, kv, step_to_device(step))
        return np.asarray(logits[0])

    chunk = prefill_chunk or len(prompt_ids)
    for start in range(0, len(prompt_ids), chunk):
        logits = run(prompt_ids[start:start + chunk], start)
    out: list[int] = []
    while len(out) < max_new_tokens:
        tok = sample_token(logits, temperature, top_p, rng)
        out.append(tok)
        if (tok in eos and not ignore_eos) or len(out) == max_new_tokens:
            break
        logits = run([tok], len(prompt_ids) + len(out) - 1)
    return out
