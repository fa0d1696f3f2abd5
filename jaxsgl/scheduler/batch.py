"""Host-side batch description of one step, and its packing into a bucketed StepInput.

Scheduler.schedule() returns a ScheduledBatch: one SeqWork per sequence. The
engine turns it into the device pytree with StepInputBuilder.build(batch), which
pads to the smallest configured bucket for tokens (T), sequences (S) and pages
per sequence (P), so the set of compiled shapes is fixed at construction
(StepInputBuilder.shapes() lists them for warm-up).
"""
from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from jaxsgl.model.step_input import PAD_PAGE, PAD_SLOT, StepInput, make_step_input
from jaxsgl.scheduler.request import Req
from jaxsgl.scheduler.trace import StepTrace


@dataclass
class SeqWork:
    """One sequence of a step.

    new_token_ids: tokens fed this step (positions cached_len, cached_len + 1, ...).
    cached_len:    tokens of KV the sequence holds before this step.
    pages:         the request's page list (covers cached_len + len(new_token_ids) tokens);
                   a live view, valid until process_results().
    need_logits:   True for the last chunk of a prefill and for decodes: sample a token.
    is_prefill:    prompt (or re-prefill after retraction) work rather than a decode.
    """

    req: Req
    new_token_ids: list[int]
    cached_len: int
    pages: list[int]
    need_logits: bool
    is_prefill: bool
    discarded: bool = False  # its results are ignored (Scheduler.jump_forward rolled it back in flight)

    @property
    def num_new(self) -> int:
        return len(self.new_token_ids)

    @property
    def kv_len(self) -> int:
        """KV length after the step."""
        return self.cached_len + len(self.new_token_ids)


@dataclass
class ScheduledBatch:
    """Everything one step runs, in sequence order (the order of StepInput rows)."""

    step: int
    seqs: list[SeqWork]
    trace: StepTrace

    def __len__(self) -> int:
        return len(self.seqs)

    def __bool__(self) -> bool:
        return bool(self.seqs)

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new for s in self.seqs)

    @property
    def reqs(self) -> list[Req]:
        return [s.req for s in self.seqs]

    @property
    def logits_rows(self) -> list[int]:
        """Indices of sequences whose sampled token is used."""
        return [i for i, s in enumerate(self.seqs) if s.need_logits]


def pow2_buckets(max_size: int, min_size: int = 1) -> list[int]:
    """[min_size, 2*min_size, ...] up to the first power-of-two multiple >= max_size."""
    if max_size < 1 or min_size < 1:
        raise ValueError(f"bucket sizes must be >= 1, got min {min_size}, max {max_size}")
    sizes = [min_size]
    while sizes[-1] < max_size:
        sizes.append(sizes[-1] * 2)
    return sizes


MIN_PAGE_TABLE_WIDTH = 16  # pages: the narrowest page table build() emits with narrow_page_tables
TOKEN_BUCKET_ALIGN = 128  # the capped last token bucket is a multiple of this (kernel tiles divide it)


def capped_token_buckets(max_tokens: int, min_tokens: int = 1) -> list[int]:
    """pow2_buckets, with the last bucket cut down to max_tokens rounded up to TOKEN_BUCKET_ALIGN.
    A step never holds more than max_tokens (prefill budget + one decode token per running request),
    so a full mixed step (e.g. 2,048 prefill + 256 decode tokens) pads to 2,304, not to 4,096."""
    sizes = pow2_buckets(max_tokens, min_tokens)
    cap = -(-max_tokens // TOKEN_BUCKET_ALIGN) * TOKEN_BUCKET_ALIGN
    if len(sizes) > 1 and sizes[-2] < cap < sizes[-1]:
        sizes[-1] = cap
    return sizes


class StepInputBuilder:
    """Packs ScheduledBatches into StepInputs padded to fixed bucket sizes."""

    def __init__(self, page_size: int, token_buckets: Sequence[int], seq_buckets: Sequence[int],
                 page_buckets: Sequence[int]) -> None:
        for name, b in (("token", token_buckets), ("seq", seq_buckets), ("page", page_buckets)):
            if not b or any(x < 1 for x in b):
                raise ValueError(f"{name}_buckets must be non-empty positive sizes, got {list(b)}")
        self.page_size = page_size
        # build() emits page tables only as wide as the batch needs (narrow_widths), not the compiled
        # width: the runner pads them on the device (ModelRunner.pages_per_seq)
        self.narrow_page_tables = False
        self.token_buckets = sorted(set(token_buckets))
        self.seq_buckets = sorted(set(seq_buckets))
        self.page_buckets = sorted(set(page_buckets))

    @classmethod
    def for_limits(cls, page_size: int, *, max_tokens: int, max_seqs: int, max_context_len: int,
                   min_tokens: int = 16, min_seqs: int = 1, page_buckets: Sequence[int] | None = None,
                   min_page_tokens: int | None = None) -> StepInputBuilder:
        """Power-of-two token (the last capped: capped_token_buckets) and sequence buckets covering a scheduler's limits
        (max_tokens >= prefill budget + max_running_requests, max_seqs >=
        max_running_requests). Pages per sequence: one bucket holding max_context_len
        tokens (the page table is small; kernels stop at kv_len), or with min_page_tokens
        power-of-two widths from that many tokens up (for attention whose cost grows with
        the table's width, e.g. the plain-jnp reference)."""
        max_pages = -(-max_context_len // page_size)
        if page_buckets is None:
            page_buckets = [max_pages] if min_page_tokens is None else \
                pow2_buckets(max_pages, min(max_pages, max(1, min_page_tokens // page_size)))
        return cls(page_size, capped_token_buckets(max_tokens, min(min_tokens, max_tokens)),
                   pow2_buckets(max_seqs, min(min_seqs, max_seqs)), page_buckets)

    @classmethod
    def for_engine(cls, page_size: int, *, prefill_budget: int, max_running_requests: int, max_context_len: int,
                   seq_buckets: Sequence[int] | None = None, min_page_tokens: int | None = None) -> StepInputBuilder:
        """The buckets an Engine pads its steps to (the Simulator pads its simulated steps the same way):
        for_limits of the scheduler's limits, with the sequence buckets given (plus max_running_requests)."""
        b = cls.for_limits(page_size, max_tokens=prefill_budget + max_running_requests,
                           max_seqs=max_running_requests, max_context_len=max_context_len,
                           min_page_tokens=min_page_tokens)
        if seq_buckets:
            b.seq_buckets = sorted(set(seq_buckets) | {max_running_requests})
        return b

    @staticmethod
    def _fit(buckets: list[int], n: int, what: str) -> int:
        i = bisect.bisect_left(buckets, n)
        if i == len(buckets):
            raise ValueError(f"{n} {what} exceed the largest bucket {buckets[-1]}")
        return buckets[i]

    def padded_shape(self, batch: ScheduledBatch) -> tuple[int, int, int]:
        """(T, S, P) bucket sizes this batch pads to."""
        ps = self.page_size
        pages = max([-(-s.kv_len // ps) for s in batch.seqs] + [1])
        return (self._fit(self.token_buckets, max(batch.num_tokens, 1), "tokens"),
                self._fit(self.seq_buckets, max(len(batch.seqs), 1), "sequences"),
                self._fit(self.page_buckets, pages, "pages per sequence"))

    def narrow_widths(self, width: int) -> list[int]:
        """The page-table widths below `width` that build() emits with narrow_page_tables: powers of 4
        from MIN_PAGE_TABLE_WIDTH (few: the runner compiles a small padding function for each)."""
        out, w = [], MIN_PAGE_TABLE_WIDTH
        while self.narrow_page_tables and w < width:
            out.append(w)
            w *= 4
        return out

    def build(self, batch: ScheduledBatch) -> StepInput:
        """The padded StepInput of a batch (numpy only; the engine moves it to the device).
        Same result as make_step_input (the reference), vectorized over tokens; with
        narrow_page_tables its page table keeps only the first columns that hold every sequence's
        pages (the narrowest of narrow_widths(); the rest would be PAD_PAGE)."""
        T, S, P = self.padded_shape(batch)
        ps, seqs = self.page_size, batch.seqs
        n_new = np.fromiter((s.num_new for s in seqs), np.int32, len(seqs))
        cached = np.fromiter((s.cached_len for s in seqs), np.int32, len(seqs))
        kv_lens = cached + n_new
        n_pages = -(-kv_lens // ps)
        if self.narrow_page_tables:
            most = int(n_pages.max(initial=1))
            P = next((w for w in self.narrow_widths(P) if w >= most), P)
        total = int(n_new.sum())
        token_ids = np.zeros(T, np.int32)
        token_ids[:total] = np.fromiter(itertools.chain.from_iterable(s.new_token_ids for s in seqs), np.int32, total)
        page_table = np.full((S, P), PAD_PAGE, np.int32)
        flat_pages = np.fromiter(itertools.chain.from_iterable(
            itertools.islice(s.pages, k) for s, k in zip(seqs, n_pages.tolist())), np.int32, int(n_pages.sum()))
        page_table[:len(seqs)][np.arange(P)[None, :] < n_pages[:, None]] = flat_pages
        query_start = np.zeros(S + 1, np.int32)
        np.cumsum(n_new, out=query_start[1:len(seqs) + 1])
        query_start[len(seqs) + 1:] = total
        seq_of_token = np.repeat(np.arange(len(seqs)), n_new)
        positions = np.zeros(T, np.int32)
        positions[:total] = cached[seq_of_token] + np.arange(total) - query_start[seq_of_token]
        slots = np.full(T, PAD_SLOT, np.int32)
        slots[:total] = page_table[seq_of_token, positions[:total] // ps] * ps + positions[:total] % ps
        kv_padded = np.zeros(S, np.int32)
        kv_padded[:len(seqs)] = kv_lens
        logits_indices = np.zeros(S, np.int32)
        logits_indices[:len(seqs)] = np.maximum(query_start[1:len(seqs) + 1] - 1, 0)
        return StepInput(token_ids, positions, query_start, kv_padded, page_table, slots, logits_indices)

    def build_reference(self, batch: ScheduledBatch) -> StepInput:
        """build() through make_step_input (slow, obviously right; for tests)."""
        T, S, P = self.padded_shape(batch)
        ps = self.page_size
        seqs = [(s.new_token_ids, s.cached_len, s.pages[:-(-s.kv_len // ps)]) for s in batch.seqs]
        return make_step_input(seqs, ps, num_tokens=T, num_seqs=S, pages_per_seq=P)

    def shapes(self) -> list[tuple[int, int, int]]:
        """Every (T, S, P) this builder can emit (for ahead-of-time compilation).
        A batch never has more sequences than tokens, so S <= T is dropped where a smaller
        S bucket would do."""
        out = []
        for t in self.token_buckets:
            for s in self.seq_buckets:
                if self._fit(self.seq_buckets, min(s, t), "sequences") == s:
                    out.extend((t, s, p) for p in self.page_buckets)
        return out

    def shapes_for(self, min_q: int, max_q: int | None = None) -> list[tuple[int, int, int]]:
        """The (T, S, P) of shapes() a batch pads to when each of its sequences has min_q to
        max_q (None: any number of) new tokens; (1, 1) is a pure decode batch."""
        tb, most_t = self.token_buckets, self.token_buckets[-1]
        ts = set()
        for n in range(1, min(self.seq_buckets[-1], most_t // min_q) + 1):
            lo, hi = n * min_q, most_t if max_q is None else min(n * max_q, most_t)
            s = self._fit(self.seq_buckets, n, "sequences")
            ts.update((t, s) for i, t in enumerate(tb) if t >= lo and (tb[i - 1] if i else 0) < hi)
        return [(t, s, p) for t, s in sorted(ts) for p in self.page_buckets]
