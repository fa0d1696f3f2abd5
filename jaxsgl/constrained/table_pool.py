"""AutomatonPool: where compiled automata live in the device's pooled grammar tables (host side).

The engine keeps ONE set of device tables for every constrained request (engine/grammar_tables.py):

    states  int32[S_cap, 4]   per global state: (mask row, default next state, exception start, exception count)
    masks   uint32[M_cap, W]  allowed-token bitmask rows, de-duplicated across all resident automata
    exc     int32[E_cap, 2]   (token, next state) where the next state is not the state's default,
                              sorted by token within a state (the device binary-searches them)

An automaton's transitions are compressed on the way in: most tokens of a state lead to one
state (inside a JSON string nearly every token loops back), so each state keeps that default
and only the exceptions are listed. Mask rows are shared: the "inside a string" row of one
schema is the row of every other schema.

Placement is like KV pages: `acquire(key, fsm)` places an automaton (or finds it resident) and
pins it for one request; `release(key)` unpins it; unpinned automata stay resident (so the next
request with the same constraint uploads nothing) until space is needed, then the least
recently used go. What must be written to the device is returned as an `Upload`.
"""
from __future__ import annotations

import hashlib
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Hashable, NamedTuple

import numpy as np

from jaxsgl.constrained.automaton import TokenAutomaton


class RangeAllocator:
    """First-fit allocator of contiguous [start, start + n) ranges in [0, capacity)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._free: list[tuple[int, int]] = [(0, capacity)] if capacity else []  # (start, length), sorted

    @property
    def num_free(self) -> int:
        return sum(n for _, n in self._free)

    def alloc(self, n: int) -> int | None:
        """Start of a free range of n slots (n == 0 gives 0), or None if none is big enough."""
        if n == 0:
            return 0
        for i, (start, length) in enumerate(self._free):
            if length >= n:
                self._free[i] = (start + n, length - n)
                if length == n:
                    del self._free[i]
                return start
        return None

    def free(self, start: int, n: int) -> None:
        """Return [start, start + n) (merging with its neighbours)."""
        if n == 0:
            return
        self._free.append((start, n))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for s, length in self._free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + length)
            else:
                merged.append((s, length))
        self._free = merged


class Upload(NamedTuple):
    """Rows to scatter into the device tables (index arrays name the destination rows)."""

    state_idx: np.ndarray   # int32[n]
    state_rows: np.ndarray  # int32[n, 4]
    mask_idx: np.ndarray    # int32[m]
    mask_rows: np.ndarray   # uint32[m, W]
    exc_idx: np.ndarray     # int32[e]
    exc_rows: np.ndarray    # int32[e, 2]


class Compressed(NamedTuple):
    """An automaton's tables in pool form, with local state numbers."""

    default_next: np.ndarray   # int32[S] (-1: no transition)
    exc_start: np.ndarray      # int32[S] offsets into exc_token / exc_next
    exc_len: np.ndarray        # int32[S]
    exc_token: np.ndarray      # int32[E']
    exc_next: np.ndarray       # int32[E']
    row_of_state: np.ndarray   # int32[S] index into unique_rows
    unique_rows: np.ndarray    # uint32[U, W]


def compress(fsm: TokenAutomaton) -> Compressed:
    """Default-next + exceptions per state; de-duplicated mask rows (vectorised numpy)."""
    S = fsm.num_states
    counts = np.diff(fsm.trans_start).astype(np.int64)
    state_of = np.repeat(np.arange(S, dtype=np.int64), counts)
    nxt = fsm.trans_next.astype(np.int64)
    default = np.full(S, -1, np.int32)
    if nxt.size:
        pairs, pair_counts = np.unique(state_of * S + nxt, return_counts=True)
        p_state, p_next = pairs // S, pairs % S
        order = np.lexsort((-pair_counts, p_state))  # per state, the most frequent next first
        first = np.ones(order.size, bool)
        first[1:] = p_state[order][1:] != p_state[order][:-1]
        default[p_state[order][first]] = p_next[order][first]
    is_exc = nxt != default[state_of] if nxt.size else np.zeros(0, bool)
    exc_len = np.bincount(state_of[is_exc], minlength=S).astype(np.int32) if nxt.size else np.zeros(S, np.int32)
    exc_start = np.concatenate([[0], np.cumsum(exc_len)[:-1]]).astype(np.int32)
    mask = np.ascontiguousarray(fsm.mask, dtype=np.uint32)
    rows = mask.view(np.dtype((np.void, mask.shape[1] * 4))).reshape(-1)  # one opaque value per row: a
    _, first, row_of_state = np.unique(rows, return_index=True, return_inverse=True)  # fast unique
    unique_rows = mask[first]
    return Compressed(default, exc_start, exc_len, fsm.trans_token[is_exc].astype(np.int32),
                      fsm.trans_next[is_exc].astype(np.int32), row_of_state.reshape(-1).astype(np.int32),
                      np.ascontiguousarray(unique_rows, dtype=np.uint32))


_COMPRESSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # TokenAutomaton -> Compressed
_COMPRESSED_LOCK = threading.Lock()


def compressed(fsm: TokenAutomaton) -> Compressed:
    """compress(fsm), computed once per automaton and kept while it lives (for a large automaton
    it takes a second or more: the compiler's thread calls this, so the engine's loop does not)."""
    with _COMPRESSED_LOCK:
        c = _COMPRESSED.get(fsm)
    if c is None:
        c = compress(fsm)
        with _COMPRESSED_LOCK:
            _COMPRESSED[fsm] = c
    return c


@dataclass
class Placement:
    """A resident automaton: its global state / exception ranges and its mask rows."""

    state_base: int
    num_states: int
    exc_base: int
    num_exc: int
    mask_rows: list[int]  # global row ids it references (each counted once in the row refcount)
    refs: int = 0


class PoolFull(Exception):
    """Not enough room even after evicting every unpinned automaton (the request waits)."""


class AutomatonPool:
    """Host bookkeeping of the device grammar tables: placement, sharing, pinning, eviction."""

    def __init__(self, max_states: int, max_mask_rows: int, max_exceptions: int, words: int) -> None:
        self.words = words
        self.states = RangeAllocator(max_states)
        self.exc = RangeAllocator(max_exceptions)
        self.max_mask_rows = max_mask_rows
        self._free_rows = list(range(max_mask_rows - 1, -1, -1))
        self._row_ids: dict[bytes, int] = {}   # row digest -> global row
        self._row_refs: dict[int, int] = {}    # global row -> automata referencing it
        self._row_key: dict[int, bytes] = {}
        self.resident: OrderedDict[Hashable, Placement] = OrderedDict()  # LRU order among unpinned

    def fits_ever(self, fsm: TokenAutomaton) -> bool:
        """Whether the automaton could be placed in an empty pool."""
        c = compressed(fsm)
        return (fsm.num_states <= self.states.capacity and c.exc_token.size <= self.exc.capacity
                and c.unique_rows.shape[0] <= self.max_mask_rows)

    def acquire(self, key: Hashable, fsm: TokenAutomaton) -> tuple[Placement, Upload | None]:
        """Pin the automaton for one request, placing it if not resident (evicting unpinned
        ones if needed). Returns its placement and what to upload (None if resident).
        Raises PoolFull if it does not fit now. Mutates the allocators and refcounts."""
        if key in self.resident:
            p = self.resident[key]
            p.refs += 1
            self.resident.move_to_end(key)
            return p, None
        c = compressed(fsm)
        while True:
            placed = self._try_place(c)
            if placed is not None:
                break
            if not self._evict_one():
                raise PoolFull(f"grammar tables full: need {fsm.num_states} states, {c.exc_token.size} "
                               f"exceptions, {c.unique_rows.shape[0]} mask rows")
        p, upload = placed
        p.refs = 1
        self.resident[key] = p
        return p, upload

    def release(self, key: Hashable) -> None:
        """Unpin one request's hold (the automaton stays resident until evicted)."""
        self.resident[key].refs -= 1

    def _try_place(self, c: Compressed) -> tuple[Placement, Upload] | None:
        S, E = c.default_next.size, c.exc_token.size
        digests = [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in c.unique_rows]
        new_rows = [d for d in dict.fromkeys(digests) if d not in self._row_ids]
        if len(new_rows) > len(self._free_rows):
            return None
        s0 = self.states.alloc(S)
        if s0 is None:
            return None
        e0 = self.exc.alloc(E)
        if e0 is None:
            self.states.free(s0, S)
            return None
        upload_rows, upload_idx = [], []
        global_rows = []
        for d, row in zip(digests, c.unique_rows):
            if d not in self._row_ids:
                g = self._free_rows.pop()
                self._row_ids[d], self._row_key[g], self._row_refs[g] = g, d, 0
                upload_idx.append(g)
                upload_rows.append(row)
            g = self._row_ids[d]
            self._row_refs[g] += 1
            global_rows.append(g)
        global_rows_arr = np.asarray(global_rows, np.int32)
        default = np.where(c.default_next >= 0, c.default_next + s0, -1)
        state_rows = np.stack([global_rows_arr[c.row_of_state], default, c.exc_start + e0, c.exc_len],
                              axis=1).astype(np.int32)
        upload = Upload(np.arange(s0, s0 + S, dtype=np.int32), state_rows,
                        np.asarray(upload_idx, np.int32),
                        np.stack(upload_rows).astype(np.uint32) if upload_rows else
                        np.zeros((0, self.words), np.uint32),
                        np.arange(e0, e0 + E, dtype=np.int32),
                        np.stack([c.exc_token, c.exc_next + s0], axis=1).astype(np.int32))
        return Placement(s0, S, e0, E, global_rows), upload

    def _evict_one(self) -> bool:
        """Drop the least recently used unpinned automaton; False if none."""
        for key, p in self.resident.items():
            if p.refs == 0:
                del self.resident[key]
                self.states.free(p.state_base, p.num_states)
                self.exc.free(p.exc_base, p.num_exc)
                for g in p.mask_rows:
                    self._row_refs[g] -= 1
                    if self._row_refs[g] == 0:
                        del self._row_refs[g], self._row_ids[self._row_key.pop(g)]
                        self._free_rows.append(g)
                return True
        return False

    def check_integrity(self) -> None:
        """Allocators, refcounts and residency agree."""
        used_states = sum(p.num_states for p in self.resident.values())
        used_exc = sum(p.num_exc for p in self.resident.values())
        assert self.states.num_free + used_states == self.states.capacity, "state ranges leak"
        assert self.exc.num_free + used_exc == self.exc.capacity, "exception ranges leak"
        refs: dict[int, int] = {}
        for p in self.resident.values():
            assert p.refs >= 0, "negative pin count"
            for g in p.mask_rows:
                refs[g] = refs.get(g, 0) + 1
        assert refs == self._row_refs, "mask row refcounts disagree"
        assert len(self._free_rows) + len(refs) == self.max_mask_rows, "mask rows leak"

    @property
    def num_pinned(self) -> int:
        return sum(p.refs for p in self.resident.values())
