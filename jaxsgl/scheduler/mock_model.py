"""MockModel: a numpy stand-in for the model that checks the KV page plumbing.

It keeps a fake KV array of (token id, position) per slot. Each step it writes
the new tokens through StepInput.slots, then reads every sequence's KV back
through its page-table row and checks it holds exactly that sequence's tokens
at the right positions: a page freed while still in use, a wrong page table or
a wrong slot shows up as an AssertionError. The "sampled" token is a
deterministic hash of the whole context, so identical contexts give identical
outputs whatever the cache did (the scheduler-level analogue of "token-identical
with the radix cache on and off").
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxsgl.model.step_input import StepInput
from jaxsgl.scheduler.batch import ScheduledBatch


class MockModel:
    """Deterministic fake forward pass over a fake paged KV store."""

    def __init__(self, num_pages: int, page_size: int, vocab_size: int = 1000) -> None:
        self.page_size = page_size
        self.vocab_size = vocab_size
        self.kv_token = np.full(num_pages * page_size, -1, np.int64)
        self.kv_pos = np.full(num_pages * page_size, -1, np.int64)
        self.tokens_computed = 0

    def next_token(self, context: np.ndarray) -> int:
        """The token this model 'samples' after a context."""
        weights = np.arange(1, len(context) + 1, dtype=np.int64) % 7919
        return int((context.astype(np.int64) * weights).sum() % self.vocab_size)

    def step(self, inp: StepInput, batch: ScheduledBatch | None = None, prev_tokens: np.ndarray | None = None,
             src: np.ndarray | None = None) -> np.ndarray:
        """Run one step; returns int32[S] next tokens (padded rows: -1). With `batch`,
        also checks each sequence's KV against its request's known token ids. Overlap:
        token_ids[t] = prev_tokens[src[t]] where src[t] >= 0 (the previous step's output),
        as the jitted engine step does on the device."""
        inp.check()
        if src is not None and (src >= 0).any():
            fed = np.where(src >= 0, prev_tokens[np.maximum(src, 0)], inp.token_ids)
            inp = dataclasses.replace(inp, token_ids=fed.astype(np.int32))
        ps = self.page_size
        real = inp.slots >= 0
        n_real = int(inp.query_start[-1])
        assert real[:n_real].all() and not real[n_real:].any(), "padding tokens must have slot -1"
        self.kv_token[inp.slots[real]] = inp.token_ids[real]
        self.kv_pos[inp.slots[real]] = inp.positions[real]
        self.tokens_computed += n_real
        out = np.full(inp.num_seqs, -1, np.int32)
        for s in range(inp.num_seqs):
            kv_len = int(inp.kv_lens[s])
            if kv_len == 0:
                continue
            pos = np.arange(kv_len)
            slots = inp.page_table[s, pos // ps].astype(np.int64) * ps + pos % ps
            assert (self.kv_pos[slots] == pos).all(), f"sequence {s}: KV positions corrupted"
            context = self.kv_token[slots]
            if batch is not None:
                want = np.asarray(batch.seqs[s].req.all_ids[:kv_len])  # placeholders (< 0) are unknown yet
                assert ((context == want) | (want < 0)).all(), \
                    f"sequence {s} ({batch.seqs[s].req.rid}): KV holds other tokens"
            out[s] = self.next_token(context)
        return out
