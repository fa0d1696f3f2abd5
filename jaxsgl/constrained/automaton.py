"""TokenAutomaton: a compiled regex / JSON-schema / choices constraint as numpy tables over the vocab.

States are numbered 0..num_states-1 with the initial state 0. For a vocabulary of V ids and
W = ceil(V / 32) words:

    accepting    bool[S]        EOS may be sampled here (the text so far is a full match)
    mask         uint32[S, W]   bit t % 32 of word t // 32 set iff token t is allowed (EOS iff accepting)
    trans_start  int32[S + 1]   CSR row offsets: state s's transitions are [trans_start[s], trans_start[s+1])
    trans_token  int32[E]       token of each transition, ascending within a state (EOS excluded)
    trans_next   int32[E]       state after that token

Every state can reach an accepting state (dead states are pruned at compile time), so a request
that follows the mask never gets stuck. `forced_bytes` gives the compressed-FSM jump-forward
string of a state (see docs/constrained.md).
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# A state with more allowed tokens than this is never forced (a forced state has a handful: the
# forced prefix's first byte and the tokens that extend it).
MAX_FORCED_CANDIDATES = 512
MAX_FORCED_BYTES = 1024


@dataclass(eq=False)
class TokenAutomaton:
    """Token-level DFA of a constraint; see the module docstring for the table layout."""

    accepting: np.ndarray
    mask: np.ndarray
    trans_start: np.ndarray
    trans_token: np.ndarray
    trans_next: np.ndarray
    eos_ids: tuple[int, ...]
    token_bytes: Sequence[bytes] = field(repr=False)  # the vocab's list, shared (not copied)
    source: str = ""
    _forced: dict[int, bytes] = field(default_factory=dict, repr=False)
    _forced_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    # jump_forward.plan_jump_forward's cache: plans by (vocab key, prev_state, last_token, state), retokenizations
    # by (vocab key, -1, last_token, state); not pickled
    jump_plans: dict[tuple[str, int, int, int], Any] = field(default_factory=dict, repr=False)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_forced_lock"] = None
        state["jump_plans"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        state["_forced_lock"] = threading.Lock()
        self.__dict__.update(state)

    @property
    def num_states(self) -> int:
        return int(self.accepting.shape[0])

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    @property
    def num_transitions(self) -> int:
        return int(self.trans_token.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the tables (not the shared vocabulary)."""
        return int(sum(a.nbytes for a in (self.accepting, self.mask, self.trans_start,
                                           self.trans_token, self.trans_next)))

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Sorted ids allowed in state, EOS ids included when accepting."""
        bits = np.unpackbits(self.mask[state].view(np.uint8), bitorder="little")
        return np.flatnonzero(bits[: self.vocab_size]).astype(np.int32)

    def num_allowed(self, state: int) -> int:
        """Allowed non-EOS tokens in state."""
        return int(self.trans_start[state + 1] - self.trans_start[state])

    def next_state(self, state: int, token: int) -> int:
        """State after token; -1 if not allowed. EOS in an accepting state keeps the state."""
        if token in self.eos_ids:
            return state if self.accepting[state] else -1
        lo, hi = int(self.trans_start[state]), int(self.trans_start[state + 1])
        i = lo + int(self.trans_token[lo:hi].searchsorted(token))  # the method: no numpy dispatch
        if i < hi and self.trans_token[i] == token:
            return int(self.trans_next[i])
        return -1

    def is_accepting(self, state: int) -> bool:
        return bool(self.accepting[state])

    def is_terminal(self, state: int) -> bool:
        """Accepting with no outgoing transition: only EOS remains."""
        return bool(self.accepting[state]) and self.num_allowed(state) == 0

    def forced_bytes(self, state: int) -> bytes:
        """The longest byte string every valid continuation from state starts with (b"" if none).

        Walks byte by byte: in a non-accepting state with few allowed tokens, the longest common
        prefix of their bytes is forced; if one allowed token is exactly that prefix, continue from
        its next state. Cached per state (mutates only the cache).
        """
        cached = self._forced.get(state)
        if cached is not None:
            return cached
        out = bytearray()
        visited: set[int] = set()
        s = state
        while s >= 0 and s not in visited and len(out) < MAX_FORCED_BYTES:
            visited.add(s)
            tail = self._forced.get(s) if s != state else None
            if tail is not None:
                out += tail
                break
            s = self._forced_step(s, out)
        result = bytes(out[:MAX_FORCED_BYTES])
        with self._forced_lock:
            self._forced[state] = result
        return result

    def _forced_step(self, state: int, out: bytearray) -> int:
        """Append state's forced prefix to out; the state after it, or -1 to stop."""
        if self.accepting[state]:
            return -1
        lo, hi = int(self.trans_start[state]), int(self.trans_start[state + 1])
        if hi - lo == 0 or hi - lo > MAX_FORCED_CANDIDATES:
            return -1
        tokens = self.trans_token[lo:hi]
        pieces = [self.token_bytes[t] for t in tokens]
        prefix = os.path.commonprefix(pieces)
        if not prefix:
            return -1
        out += prefix
        for i, piece in enumerate(pieces):
            if piece == prefix:
                return int(self.trans_next[lo + i])
        return -1  # no token is exactly the prefix: forced, but the state after it is unknown here

    def check_integrity(self) -> None:
        """Assert the table invariants (shapes, CSR order, mask == transitions + EOS)."""
        s, w = self.num_states, (self.vocab_size + 31) // 32
        assert self.mask.shape == (s, w) and self.mask.dtype == np.uint32
        assert self.trans_start.shape == (s + 1,) and self.trans_start[0] == 0
        assert self.trans_start[-1] == self.num_transitions
        assert np.all(np.diff(self.trans_start) >= 0)
        assert self.trans_next.min(initial=0) >= 0 and self.trans_next.max(initial=0) < s
        rows = np.repeat(np.arange(s), np.diff(self.trans_start))
        key = rows.astype(np.int64) * self.vocab_size + self.trans_token
        assert np.all(np.diff(key) > 0), "transitions not sorted by (state, token)"
        expect = build_mask(s, self.vocab_size, rows, self.trans_token, self.accepting, self.eos_ids)
        assert np.array_equal(expect, self.mask), "mask disagrees with transitions"


def build_mask(
    num_states: int,
    vocab_size: int,
    rows: np.ndarray,
    tokens: np.ndarray,
    accepting: np.ndarray,
    eos_ids: Sequence[int],
) -> np.ndarray:
    """uint32[S, W] bitmask from (row, token) pairs sorted by (row, token), plus EOS in accepting rows."""
    words = (vocab_size + 31) // 32
    mask = np.zeros((num_states, words), np.uint32)
    if tokens.size:
        cell = rows.astype(np.int64) * words + (tokens >> 5)
        bits = np.left_shift(np.uint32(1), (tokens & 31).astype(np.uint32))
        starts = np.flatnonzero(np.concatenate([[True], cell[1:] != cell[:-1]]))
        # Distinct bits within a cell: their sum is their OR.
        mask.reshape(-1)[cell[starts]] = np.add.reduceat(bits, starts)
    acc = np.flatnonzero(accepting)
    for eos in eos_ids:
        mask[acc, eos >> 5] |= np.uint32(1 << (eos & 31))
    return mask
