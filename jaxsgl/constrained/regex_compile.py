"""regex -> TokenAutomaton through outlines-core's token index, then numpy.

outlines-core (Rust) builds the token-level index: for each DFA state it walks every token's bytes
and keeps the tokens that stay alive (it releases the GIL meanwhile; the steps below do not, which
is why GrammarCompiler runs this in worker processes). From its serialised form the tables are built vectorised: renumber states (initial -> 0), prune
states that cannot reach an accepting state, sort into CSR, pack the bitmask.

outlines-core's DFA has leftmost-first match semantics: once a match is reached, lower-priority
continuations are dropped, so `(a|ab)` would never allow `ab` and SGLang's REGEX_FLOAT would not
allow `0.` (measured). The regex is therefore compiled as `(?:regex)X` with a sentinel character X
that no token spells (a Unicode noncharacter) and a pseudo-token for it: no match state exists
before X, so nothing is pruned; a state is accepting iff X leads from it to a match. The sentinel's
transitions and the states only it reaches are then dropped.
"""
from __future__ import annotations

import threading
from collections import OrderedDict, deque

import numpy as np

from jaxsgl.constrained.automaton import TokenAutomaton, build_mask
from jaxsgl.constrained.errors import ConstraintError
from jaxsgl.constrained.index_decode import DecodedIndex, IndexFormatError, decode_index
from jaxsgl.constrained.vocab import TokenVocab

DEFAULT_MAX_STATES = 20_000
DEFAULT_MAX_TRANSITIONS = 20_000_000  # 160 MB of int32 CSR

_vocab_cache: OrderedDict[str, object] = OrderedDict()
_vocab_lock = threading.Lock()


_SENTINEL_CANDIDATES = ("\U0010FFFF", "\U0010FFFE", "\uFFFF", "\uFDD0")


def outlines_vocabulary(vocab: TokenVocab) -> tuple[object, str, np.ndarray]:
    """(outlines-core Vocabulary, sentinel char, int64[256] tokens per first byte), cached per vocab.key.

    Its EOS id is vocab_size and the sentinel's pseudo-token id vocab_size + 1 (neither a real token).
    """
    from outlines_core import Vocabulary

    with _vocab_lock:
        cached = _vocab_cache.get(vocab.key)
        if cached is not None:
            _vocab_cache.move_to_end(vocab.key)
            return cached
    by_bytes: dict[bytes, list[int]] = {}
    for tid, piece in enumerate(vocab.token_bytes):
        if piece:
            by_bytes.setdefault(piece, []).append(tid)
    sentinel = next(c for c in _SENTINEL_CANDIDATES if c.encode() not in by_bytes)
    first_byte_hist = np.bincount([piece[0] for piece in vocab.token_bytes if piece], minlength=256)
    by_bytes[sentinel.encode()] = [vocab.vocab_size + 1]
    built = (Vocabulary(vocab.vocab_size, by_bytes), sentinel, first_byte_hist.astype(np.int64))
    with _vocab_lock:
        _vocab_cache[vocab.key] = built
        while len(_vocab_cache) > 4:
            _vocab_cache.popitem(last=False)
    return built


def _strip_anchors(regex: str) -> str:
    """regex without a leading ^ / trailing unescaped $ (matching is always whole-output)."""
    if regex.startswith("^"):
        regex = regex[1:]
    if regex.endswith("$"):
        backslashes = len(regex) - 1 - len(regex[:-1].rstrip("\\"))
        if backslashes % 2 == 0:
            regex = regex[:-1]
    return regex


def _short(text: str, limit: int = 120) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _index_or_error(regex: str, sentinel: str, outlines_vocab: object) -> object:
    """outlines-core Index of `(?:regex)<sentinel>`; ConstraintError naming the problem if it fails."""
    from outlines_core import Index

    try:
        return Index(f"(?:{_strip_anchors(regex)})\\x{{{ord(sentinel):X}}}", outlines_vocab)
    except ValueError as e:
        msg = str(e)
        if "incompatible" in msg:
            raise ConstraintError(
                f"regex {_short(regex)} has no path the vocabulary can produce "
                f"(empty language, or characters no token spells): {msg}") from None
        raise ConstraintError(f"invalid regex {_short(regex)}: {msg}") from None
    except BaseException as e:  # outlines-core panics surface as pyo3 PanicException
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise ConstraintError(f"regex {_short(regex)} could not be compiled: {e}") from None


_byte_vocab_cache: dict[str, object] = {}


def byte_dfa_profile(regex: str, sentinel: str = _SENTINEL_CANDIDATES[0]) -> tuple[int, np.ndarray]:
    """(byte-DFA states, int64[256] how many states allow each byte) of regex: a cheap preflight.

    outlines-core over a vocabulary of the 256 single bytes (milliseconds for typical constraints)
    bounds the token automaton before the expensive build over the real vocabulary.
    """
    from outlines_core import Vocabulary

    byte_vocab = _byte_vocab_cache.get(sentinel)
    if byte_vocab is None:
        byte_vocab = Vocabulary(256, {bytes([b]): [b] for b in range(256)} | {sentinel.encode(): [257]})
        _byte_vocab_cache[sentinel] = byte_vocab
    raw = _decode(_index_or_error(regex, sentinel, byte_vocab), 256)
    return int(raw.states.size), np.bincount(raw.token[raw.token < 256], minlength=256).astype(np.int64)


def _preflight(regex: str, sentinel: str, first_byte_hist: np.ndarray, max_states: int, max_transitions: int) -> None:
    """ConstraintError early when the byte DFA shows the token automaton would be far over the limits."""
    num_states, states_per_byte = byte_dfa_profile(regex, sentinel)
    estimate = int(states_per_byte @ first_byte_hist)  # >= token transitions (mid-token states count too)
    if num_states > 4 * max_states:
        raise ConstraintError(
            f"constraint {_short(regex)} has a {num_states}-state DFA (> 4 x max_states={max_states})")
    if estimate > 4 * max_transitions:
        raise ConstraintError(f"constraint {_short(regex)} would need about {estimate} token transitions "
                              f"(> 4 x max_transitions={max_transitions})")


def _decode(index: object, eos_id: int) -> DecodedIndex:
    """Flat transitions of an outlines Index; the slow dict API only if the blob format changed."""
    try:
        decoded = decode_index(index.__reduce__()[1][0])
        if decoded.eos_token_id == eos_id and decoded.initial_state == index.get_initial_state():
            return decoded
    except (IndexFormatError, IndexError, TypeError):
        pass
    table = index.get_transitions()
    src = [s for s, row in table.items() for _ in row]
    tok = [t for row in table.values() for t in row]
    dst = [n for row in table.values() for n in row.values()]
    return DecodedIndex(index.get_initial_state(), np.array(list(table), np.int64),
                        np.array(sorted(index.get_final_states()), np.int64),
                        np.array(src, np.int64), np.array(tok, np.int64), np.array(dst, np.int64), eos_id, -1)


def _distinct_edges(num_states: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (src, dst) state pairs, sorted by src then dst."""
    if num_states <= 4096:
        adj = np.zeros((num_states, num_states), bool)
        adj[src, dst] = True
        return np.nonzero(adj)
    edges = np.unique(src * num_states + dst)
    return edges // num_states, edges % num_states


def _bfs(num_states: int, starts: list[int], e_from: np.ndarray, e_to: np.ndarray, allowed: np.ndarray) -> list[int]:
    """States reachable from starts along (e_from -> e_to) edges within allowed, in BFS order."""
    order = np.argsort(e_from, kind="stable")
    e_from, e_to = e_from[order], e_to[order]
    row = np.searchsorted(e_from, np.arange(num_states + 1))
    seen = np.zeros(num_states, bool)
    seen[starts] = True
    visit, queue = list(starts), deque(starts)
    while queue:
        s = queue.popleft()
        for t in e_to[row[s] : row[s + 1]].tolist():
            if allowed[t] and not seen[t]:
                seen[t] = True
                visit.append(t)
                queue.append(t)
    return visit


def compile_regex(
    regex: str,
    vocab: TokenVocab,
    *,
    max_states: int = DEFAULT_MAX_STATES,
    max_transitions: int = DEFAULT_MAX_TRANSITIONS,
) -> TokenAutomaton:
    """The TokenAutomaton of regex over vocab; ConstraintError if invalid, unsatisfiable or too large."""
    outlines_vocab, sentinel, first_byte_hist = outlines_vocabulary(vocab)
    _preflight(regex, sentinel, first_byte_hist, max_states, max_transitions)
    index = _index_or_error(regex, sentinel, outlines_vocab)
    raw = _decode(index, vocab.vocab_size)
    # Accepting: a sentinel transition reaches a match. Then drop the sentinel and EOS transitions.
    via_sentinel = raw.token == vocab.vocab_size + 1
    accepting_old = raw.src[via_sentinel][np.isin(raw.dst[via_sentinel], raw.final_states)]
    keep = raw.token < vocab.vocab_size
    src_old, tok, dst_old = raw.src[keep], raw.token[keep], raw.dst[keep]
    old_ids = np.unique(np.concatenate([[raw.initial_state], raw.states, accepting_old]))
    if old_ids.size > max_states:
        raise ConstraintError(
            f"constraint {_short(regex)} needs {old_ids.size} automaton states > max_states={max_states}")
    if tok.size > max_transitions:
        raise ConstraintError(
            f"constraint {_short(regex)} needs {tok.size} token transitions > max_transitions={max_transitions}")
    lookup = np.full(int(old_ids[-1]) + 1, -1, np.int64)  # outlines state id -> dense id
    lookup[old_ids] = np.arange(old_ids.size)
    src, dst = lookup[src_old], lookup[dst_old]
    if dst.size and dst.min() < 0:  # a target state without a row of its own: keep it (it may be final)
        old_ids = np.unique(np.concatenate([old_ids, dst_old]))
        lookup = np.full(int(old_ids[-1]) + 1, -1, np.int64)
        lookup[old_ids] = np.arange(old_ids.size)
        src, dst = lookup[src_old], lookup[dst_old]
    accepting = np.zeros(old_ids.size, bool)
    accepting[lookup[accepting_old]] = True
    initial = int(lookup[raw.initial_state])

    num_old = old_ids.size
    e_src, e_dst = _distinct_edges(num_old, src, dst)
    live = np.zeros(num_old, bool)  # can reach an accepting state
    live[_bfs(num_old, np.flatnonzero(accepting).tolist(), e_dst, e_src, np.ones(num_old, bool))] = True
    if not live[initial]:
        raise ConstraintError(
            f"regex {_short(regex)} has no path the vocabulary can produce (no accepting state reachable)")
    # Renumber the live states reachable from the initial state in BFS order (initial -> 0).
    order = np.array(_bfs(num_old, [initial], e_src, e_dst, live), np.int64)
    live = np.zeros(num_old, bool)
    live[order] = True
    new_id = np.full(num_old, -1, np.int64)
    new_id[order] = np.arange(order.size)
    keep = live[src] & live[dst]
    src, tok, dst = new_id[src[keep]], tok[keep], new_id[dst[keep]]
    num_states = order.size

    by_state_token = np.argsort(src * vocab.vocab_size + tok, kind="stable")
    src, tok, dst = src[by_state_token], tok[by_state_token], dst[by_state_token]
    trans_start = np.searchsorted(src, np.arange(num_states + 1)).astype(np.int32)
    accepting = accepting[order]
    mask = build_mask(num_states, vocab.vocab_size, src, tok, accepting, vocab.eos_ids)
    return TokenAutomaton(
        accepting=accepting,
        mask=mask,
        trans_start=trans_start,
        trans_token=tok.astype(np.int32),
        trans_next=dst.astype(np.int32),
        eos_ids=vocab.eos_ids,
        token_bytes=vocab.token_bytes,
        source=regex,
    )
