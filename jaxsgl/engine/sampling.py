"""Sampling inside the jitted step: penalties, temperature, top-k / top-p / min-p, seeds, logprobs.

Every row s of the batch has its own settings (SamplingInput arrays of length S).
Which transformations run at all is static (SamplingFlags), so a greedy batch
compiles to an argmax and nothing more. Randomness is a Gumbel-max draw keyed by
(request seed, number of tokens the request has generated): the same request
samples the same tokens whatever batch it runs in.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxsgl.engine.grammar_tables import GrammarTables, allowed_tokens, next_states, unpack_bits


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["temperature", "top_p", "top_k", "min_p", "frequency_penalty", "presence_penalty",
                                "repetition_penalty", "seed", "counter", "penalty_ids", "penalty_is_output",
                                "next_token_ids", "ban_ids", "grammar_state", "grammar_src", "host_mask"],
                   meta_fields=[])
@dataclass
class SamplingInput:
    """Per-row sampling settings, S rows (padding rows are greedy and ignored).

    penalty_ids / penalty_is_output: [S, M] tokens seen so far (prompt and output; -1 pads),
      only read when flags.penalties (M = 1 otherwise).
    next_token_ids: [T] the token after each step token (for input logprobs; -1 where unknown),
      only read when flags.input_logprobs.
    ban_ids: [S, B] tokens this row may not sample (-1 pads; eos and stop_token_ids before
      min_new_tokens), only read when flags.ban (B = 1 otherwise).
    grammar_state: [S] global automaton state of each row's constraint (-1: none; engine/grammar_tables.py),
      grammar_src: [S] the previous step's row whose computed next state replaces it (-1: use
      grammar_state; overlap), both only read when flags.grammar.
    host_mask: [S, W] allowed-token bits computed on the host (EBNF), all-ones rows for the others,
      only read when flags.host_mask ([1, 1] otherwise).
    """

    temperature: np.ndarray  # f32[S]; 0 = greedy
    top_p: np.ndarray  # f32[S]
    top_k: np.ndarray  # i32[S]; <= 0 = off
    min_p: np.ndarray  # f32[S]
    frequency_penalty: np.ndarray  # f32[S]
    presence_penalty: np.ndarray  # f32[S]
    repetition_penalty: np.ndarray  # f32[S]
    seed: np.ndarray  # u32[S]
    counter: np.ndarray  # i32[S] tokens generated so far
    penalty_ids: np.ndarray  # i32[S, M]
    penalty_is_output: np.ndarray  # bool[S, M]
    next_token_ids: np.ndarray  # i32[T]
    ban_ids: np.ndarray  # i32[S, B]
    grammar_state: np.ndarray  # i32[S]
    grammar_src: np.ndarray  # i32[S]
    host_mask: np.ndarray  # u32[S, W]

    def to_device(self) -> "SamplingInput":
        return SamplingInput(**{f.name: jnp.asarray(getattr(self, f.name)) for f in fields(self)})


class SamplingFlags(NamedTuple):
    """Static switches (part of the jit key)."""

    sample: bool = False  # some row has temperature > 0
    filter: bool = False  # some sampled row uses top-k, top-p or min-p
    penalties: bool = False
    input_logprobs: bool = False
    top_logprobs: int = 0  # top-k logprobs per position (0 = none)
    ban: bool = False  # some row has banned tokens (min_new_tokens)
    grammar: bool = False  # some row follows a device automaton (regex / JSON schema / choices)
    host_mask: bool = False  # some row has a host-computed mask (EBNF)


class SampleOutput(NamedTuple):
    token_ids: jax.Array  # i32[S]
    logprobs: jax.Array  # f32[S] logprob of the chosen token under the model (raw logits)
    top_ids: jax.Array | None  # i32[S, k]
    top_logprobs: jax.Array | None  # f32[S, k]
    input_logprobs: jax.Array | None  # f32[T] logprob of next_token_ids[t] after token t
    input_top_ids: jax.Array | None  # i32[T, k]
    input_top_logprobs: jax.Array | None  # f32[T, k]
    next_state: jax.Array | None  # i32[S] automaton state after the chosen token (flags.grammar)


def output_layout(S: int, T: int, flags: SamplingFlags) -> tuple:
    """Shapes and dtypes of the SampleOutput fields a step with these flags returns (packing Layout)."""
    k = flags.top_logprobs
    rows = [("token_ids", (S,), "int32"), ("logprobs", (S,), "float32")]
    if k:
        rows += [("top_ids", (S, k), "int32"), ("top_logprobs", (S, k), "float32")]
    if flags.input_logprobs:
        rows += [("input_logprobs", (T,), "float32")]
        if k:
            rows += [("input_top_ids", (T, k), "int32"), ("input_top_logprobs", (T, k), "float32")]
    if flags.grammar:
        rows += [("next_state", (S,), "int32")]
    return tuple(rows)


def apply_penalties(logits: jax.Array, si: SamplingInput) -> jax.Array:
    """Repetition (prompt + output tokens), frequency and presence (output tokens) penalties."""
    S, V = logits.shape
    ids = jnp.where(si.penalty_ids < 0, V, si.penalty_ids)
    rows = jnp.arange(S)[:, None]
    seen = jnp.zeros((S, V), jnp.bool_).at[rows, ids].set(True, mode="drop")
    counts = jnp.zeros((S, V), jnp.float32).at[rows, ids].add(si.penalty_is_output.astype(jnp.float32), mode="drop")
    rp = si.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits > 0, logits / rp, logits * rp), logits)
    logits = logits - si.frequency_penalty[:, None] * counts
    return logits - si.presence_penalty[:, None] * (counts > 0)


def ban_tokens(logits: jax.Array, ban_ids: jax.Array) -> jax.Array:
    """logits with ban_ids[s] (>= 0) of each row s set to -inf."""
    S, V = logits.shape
    ids = jnp.where(ban_ids < 0, V, ban_ids)
    banned = jnp.zeros((S, V), jnp.bool_).at[jnp.arange(S)[:, None], ids].set(True, mode="drop")
    return jnp.where(banned, -jnp.inf, logits)


def _filtered_sample(logits: jax.Array, si: SamplingInput, keys: jax.Array, flags: SamplingFlags) -> jax.Array:
    """Draw from softmax(logits / T) restricted by top-k, top-p and min-p."""
    S, V = logits.shape
    scaled = logits / jnp.maximum(si.temperature, 1e-6)[:, None]
    gumbel = jax.vmap(lambda k: jax.random.gumbel(k, (V,), jnp.float32))(keys)
    if not flags.filter:
        return jnp.argmax(scaled + gumbel, axis=-1).astype(jnp.int32)
    order = jnp.argsort(-scaled, axis=-1)
    sorted_logits = jnp.take_along_axis(scaled, order, axis=-1)
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    rank = jnp.arange(V)[None, :]
    keep = (si.top_k[:, None] <= 0) | (rank < si.top_k[:, None])
    keep &= (jnp.cumsum(probs, axis=-1) - probs) < si.top_p[:, None]
    keep &= probs >= si.min_p[:, None] * probs[:, :1]
    choice = jnp.argmax(jnp.where(keep, sorted_logits + gumbel, -jnp.inf), axis=-1)
    return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0].astype(jnp.int32)


def sample(logits: jax.Array, si: SamplingInput, flags: SamplingFlags,
           all_logits: jax.Array | None = None, grammar: GrammarTables | None = None) -> SampleOutput:
    """Choose one token per row of logits [S, V] (fp32); all_logits [T, V] feeds input logprobs.
    With flags.grammar, rows are masked by their automaton state and the next state is computed
    (grammar: the pooled tables); with flags.host_mask, by si.host_mask."""
    S, V = logits.shape
    logprobs_all = jax.nn.log_softmax(logits, axis=-1)
    processed = apply_penalties(logits, si) if flags.penalties else logits
    if flags.ban:
        processed = ban_tokens(processed, si.ban_ids)
    if flags.grammar:
        processed = jnp.where(allowed_tokens(grammar, si.grammar_state, V), processed, -jnp.inf)
    if flags.host_mask:
        processed = jnp.where(unpack_bits(si.host_mask, V), processed, -jnp.inf)
    tokens = jnp.argmax(processed, axis=-1).astype(jnp.int32)
    if flags.sample:
        keys = jax.vmap(lambda s, c: jax.random.fold_in(jax.random.PRNGKey(s), c))(si.seed, si.counter)
        sampled = _filtered_sample(processed, si, keys, flags)
        tokens = jnp.where(si.temperature > 0, sampled, tokens)
    chosen_lp = jnp.take_along_axis(logprobs_all, tokens[:, None], axis=-1)[:, 0]
    top_lp = top_ids = in_lp = in_top_ids = in_top_lp = None
    if flags.top_logprobs:
        top_lp, top_ids = jax.lax.top_k(logprobs_all, flags.top_logprobs)
    if flags.input_logprobs:
        lp = jax.nn.log_softmax(all_logits, axis=-1)
        nxt = jnp.clip(si.next_token_ids, 0, lp.shape[-1] - 1)
        in_lp = jnp.take_along_axis(lp, nxt[:, None], axis=-1)[:, 0]
        if flags.top_logprobs:
            in_top_lp, in_top_ids = jax.lax.top_k(lp, flags.top_logprobs)
    nxt = next_states(grammar, si.grammar_state, tokens, V) if flags.grammar else None
    return SampleOutput(tokens, chosen_lp, top_ids, top_lp, in_lp, in_top_ids, in_top_lp, nxt)
