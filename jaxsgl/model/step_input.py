"""The one pytree that crosses host -> device per step (numpy only; no JAX here).

A step is a *packed ragged batch*: S sequences, sequence s contributing
q_len_s = query_start[s+1] - query_start[s] new tokens laid out contiguously in
the flat token arrays. After the step, sequence s holds kv_lens[s] tokens of KV
(its cached prefix plus the new tokens), so new token i of sequence s sits at
absolute position kv_lens[s] - q_len_s + i.

    tokens:  | s0: t t t t | s1: t | s2: t t | pad pad |
    query_start = [0, 4, 5, 7, 7]     (padded sequences have q_len 0, kv_len 0)

Padding: tokens past query_start[-1] have slot PAD_SLOT (their KV write is
dropped) and produce garbage that nobody reads; padded sequences have
kv_lens == 0, an all-PAD_PAGE page-table row, and logits_indices == 0.

The JAX side registers this dataclass as a pytree (jaxsgl.model.forward) so that
the scheduler, which never imports JAX, can build it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

PAD_SLOT = -1  # KV write slot of a padding token: the write is dropped
PAD_PAGE = 0  # page-table entry past a sequence's last page (never read unmasked)


@dataclass
class StepInput:
    """Inputs of one forward step. Shapes: T padded tokens, S padded sequences.

    token_ids:      int32[T]     token ids of the new tokens
    positions:      int32[T]     absolute position of each new token (for RoPE)
    query_start:    int32[S+1]   cumulative new-token offsets (ragged layout)
    kv_lens:        int32[S]     KV length of each sequence after this step
    page_table:     int32[S, P]  page indices of each sequence, in order
    slots:          int32[T]     flat KV slot (page * page_size + offset) to write each new token
    logits_indices: int32[S]     token index whose logits are returned for each sequence
    """

    token_ids: np.ndarray
    positions: np.ndarray
    query_start: np.ndarray
    kv_lens: np.ndarray
    page_table: np.ndarray
    slots: np.ndarray
    logits_indices: np.ndarray

    @property
    def num_tokens(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def num_seqs(self) -> int:
        return int(self.kv_lens.shape[0])

    def check(self) -> None:
        """Raise ValueError if shapes or offsets are inconsistent (host-side debug check)."""
        t, s = self.num_tokens, self.num_seqs
        want = {"token_ids": (t,), "positions": (t,), "query_start": (s + 1,), "kv_lens": (s,),
                "slots": (t,), "logits_indices": (s,)}
        for name, shape in want.items():
            got = getattr(self, name).shape
            if got != shape:
                raise ValueError(f"StepInput.{name} has shape {got}, expected {shape}")
        if self.page_table.ndim != 2 or self.page_table.shape[0] != s:
            raise ValueError(f"StepInput.page_table has shape {self.page_table.shape}, expected ({s}, P)")
        qs = np.asarray(self.query_start)
        if qs[0] != 0 or np.any(np.diff(qs) < 0) or qs[-1] > t:
            raise ValueError(f"StepInput.query_start must rise from 0 to at most {t}: {qs}")
        if np.any(self.kv_lens < np.diff(qs)):
            raise ValueError("StepInput.kv_lens must be >= the new tokens of each sequence")


def step_input_fields() -> list[str]:
    """Names of StepInput's array fields, in order (for pytree registration)."""
    return [f.name for f in fields(StepInput)]


def make_step_input(
    seqs: list[tuple[list[int], int, list[int]]],
    page_size: int,
    *,
    num_tokens: int | None = None,
    num_seqs: int | None = None,
    pages_per_seq: int | None = None,
) -> StepInput:
    """Pack sequences into a padded StepInput.

    Each entry of seqs is (new_token_ids, cached_len, pages): the sequence already
    holds cached_len tokens of KV and its KV lives in `pages` (enough pages for
    cached_len + len(new_token_ids) tokens). Logits are taken at each sequence's
    last new token. Padding sizes default to the exact sizes.
    """
    n_tok = sum(len(s[0]) for s in seqs)
    T = num_tokens if num_tokens is not None else n_tok
    S = num_seqs if num_seqs is not None else len(seqs)
    P = pages_per_seq if pages_per_seq is not None else max([len(s[2]) for s in seqs] + [1])
    if T < n_tok or S < len(seqs):
        raise ValueError(f"padding ({T} tokens, {S} seqs) smaller than the batch ({n_tok}, {len(seqs)})")
    token_ids = np.zeros(T, np.int32)
    positions = np.zeros(T, np.int32)
    slots = np.full(T, PAD_SLOT, np.int32)
    query_start = np.zeros(S + 1, np.int32)
    kv_lens = np.zeros(S, np.int32)
    page_table = np.full((S, P), PAD_PAGE, np.int32)
    logits_indices = np.zeros(S, np.int32)
    t = 0
    for i, (new_ids, cached, pages) in enumerate(seqs):
        n = len(new_ids)
        total = cached + n
        if len(pages) * page_size < total or len(pages) > P:
            raise ValueError(f"sequence {i}: {len(pages)} pages cannot hold {total} tokens (max {P} pages)")
        pos = np.arange(cached, total, dtype=np.int32)
        token_ids[t:t + n] = new_ids
        positions[t:t + n] = pos
        pages_arr = np.asarray(pages, np.int32)
        slots[t:t + n] = pages_arr[pos // page_size] * page_size + pos % page_size
        page_table[i, :len(pages)] = pages_arr
        kv_lens[i] = total
        logits_indices[i] = t + n - 1 if n > 0 else 0
        t += n
        query_start[i + 1] = t
    query_start[len(seqs) + 1:] = t
    return StepInput(token_ids, positions, query_start, kv_lens, page_table, slots, logits_indices)
