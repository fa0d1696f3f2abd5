"""Vectorised reader of outlines-core's serialised `Index` (bincode, varint integers).

`Index.get_transitions()` builds a Python dict of dicts: ~1 s for a JSON schema with 900k token
transitions. The pickled form (`Index.__reduce__`) is the same data as one bincode blob, read here
with numpy in tens of milliseconds. Layout (bincode 2 "standard" config):

    initial_state: u32 | final_states: len, u32... | transitions: len, (state: u32, len, (token: u32, next: u32)...)...
    | eos_token_id: u32 | vocab_size: usize

Each integer is a varint: a byte < 251 is the value; 251/252/253 prefix a little-endian u16/u32/u64.
The hard part is telling prefix bytes from payload bytes that happen to be >= 251 without a
sequential scan: a candidate prefix is real unless a real prefix before it covers it (sketch):

    bytes:   fb 12 fb 07 2a ...     the first fb covers [12, fb]: the second fb is payload (fake)
             ^real  ^fake

Candidates not covered by any earlier candidate are real; the rest (a few percent) are settled
in a few vectorised rounds, each deciding those whose possible coverers are all decided.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

_WIDTH = {251: 3, 252: 5, 253: 9}
_MAX_WIDTH = 9


class DecodedIndex(NamedTuple):
    """Raw transitions of an outlines-core Index (its own sparse state ids)."""

    initial_state: int
    states: np.ndarray  # int64[S] every state with a transition row (outer map keys)
    final_states: np.ndarray  # int64[F]
    src: np.ndarray  # int64[E] source state of each transition
    token: np.ndarray  # int64[E]
    dst: np.ndarray  # int64[E]
    eos_token_id: int
    vocab_size: int


class IndexFormatError(ValueError):
    """The blob does not have the expected layout (outlines-core changed its format)."""


def _real_prefix_positions(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions and widths of the varint prefix bytes that start integers."""
    # 254 (u128) never occurs in an index, so bytes 254/255 are always payload.
    cand = np.flatnonzero((buf >= 251) & (buf <= 253))
    width = np.full(cand.size, 3, np.int64)
    width[buf[cand] == 252] = 5
    width[buf[cand] == 253] = 9
    reach = cand + width  # first byte after this candidate's integer, if it is real
    # A prefix covers at most 8 bytes, so only the 8 candidates before one can cover it.
    furthest_prior_reach = np.full(cand.size, -1, np.int64)
    for k in range(1, min(_MAX_WIDTH, cand.size)):
        np.maximum(furthest_prior_reach[k:], reach[:-k], out=furthest_prior_reach[k:])
    status = np.where(furthest_prior_reach > cand, -1, 1).astype(np.int8)  # 1 real, 0 fake, -1 undecided
    todo = np.flatnonzero(status < 0)
    while todo.size:
        any_real_cover = np.zeros(todo.size, bool)
        all_decided = np.ones(todo.size, bool)
        for k in range(1, _MAX_WIDTH):
            j = np.maximum(todo - k, 0)
            has = (todo >= k) & (reach[j] > cand[todo])
            st = status[j]
            any_real_cover |= has & (st == 1)
            all_decided &= ~has | (st >= 0)
        decided = any_real_cover | all_decided
        if not decided.any():
            raise IndexFormatError("varint prefixes could not be resolved")
        status[todo[decided]] = np.where(any_real_cover[decided], 0, 1)
        todo = todo[~decided]
    real = status == 1
    return cand[real], width[real]


def decode_varints(blob: bytes) -> np.ndarray:
    """Every varint in blob, in order, as int64."""
    buf = np.frombuffer(blob, np.uint8)
    prefix_pos, prefix_width = _real_prefix_positions(buf)
    is_start = np.ones(buf.size, bool)
    if prefix_pos.size:
        if prefix_pos[-1] + prefix_width[-1] > buf.size:
            raise IndexFormatError("outlines index blob ends inside an integer")
        lengths = prefix_width - 1
        first_payload = np.repeat(prefix_pos + 1 - np.cumsum(lengths) + lengths, lengths)
        is_start[first_payload + np.arange(int(lengths.sum()))] = False
    starts = np.flatnonzero(is_start)
    values = buf[starts].astype(np.int64)
    slot = np.searchsorted(starts, prefix_pos)
    for prefix, width in _WIDTH.items():
        sel = prefix_width == width
        pos = prefix_pos[sel]
        acc = np.zeros(pos.size, np.int64)
        for byte in range(width - 1):
            acc |= buf[pos + 1 + byte].astype(np.int64) << (8 * byte)
        values[slot[sel]] = acc
    if values.size and values.min() < 0:
        raise IndexFormatError("integer out of range in an outlines index")
    return values


def decode_index(blob: bytes) -> DecodedIndex:
    """Parse outlines-core's serialised Index into flat transition arrays (vectorised)."""
    ints = decode_varints(blob)
    n = ints.size
    if n < 5:
        raise IndexFormatError("outlines index blob too short")
    initial = int(ints[0])
    num_final = int(ints[1])
    finals = ints[2 : 2 + num_final]
    pos = 2 + num_final
    num_states = int(ints[pos])
    pos += 1
    heads = np.empty(num_states, np.int64)  # index in ints of each state's transition count
    for i in range(num_states):  # sequential over states only; transitions are handled in bulk
        if pos + 1 >= n:
            raise IndexFormatError("outlines index blob truncated")
        heads[i] = pos + 1
        pos += 2 + 2 * int(ints[pos + 1])
    if pos + 2 != n:
        raise IndexFormatError(f"outlines index blob has {n - pos} trailing integers, expected 2")
    counts = ints[heads]
    total = int(counts.sum())
    offsets = np.cumsum(counts) - counts
    pair = np.repeat(heads + 1, counts) + 2 * (np.arange(total) - np.repeat(offsets, counts))
    return DecodedIndex(
        initial_state=initial,
        states=ints[heads - 1].copy(),
        final_states=finals.copy(),
        src=np.repeat(ints[heads - 1], counts),
        token=ints[pair],
        dst=ints[pair + 1],
        eos_token_id=int(ints[pos]),
        vocab_size=int(ints[pos + 1]),
    )
