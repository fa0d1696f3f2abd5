"""Jump-forward: append a state's forced string in one extend step, retokenized as the tokenizer would.

After the model samples `last_token` (prev_state -> state), the forced bytes of `state` are known
without running the model. Appending them token by token from the automaton would give odd
tokenizations (`"`,`n`,`a`,`m`,`e`), which hurt the model; so `last_token`'s bytes plus the forced
bytes are retokenized with the real tokenizer (`vocab.encode`), and `last_token` is rolled back
when the tokenizer would merge it with what follows.

The final retokenized token is held back unless the forced string ends in a terminal state: it
may merge with what the model writes next (`"` then `,` is `",` in many vocabularies), and
forcing the split form is the known quality problem of jump-forward (sglang issue #2045).

A plan depends only on (prev_state, last_token, state), so it is cached on the automaton and shared by
every request under that constraint: a warm plan costs ~1 us, a cold one ~70 us (mostly vocab.encode).
"""
from __future__ import annotations

from typing import NamedTuple

from jaxsgl.constrained.automaton import TokenAutomaton
from jaxsgl.constrained.vocab import TokenVocab

# Tokens a jump must gain (appended minus rolled back): its extend step costs about one decode step, and
# under overlap the step in flight for the request is discarded, so a jump gaining 1 token loses time.
MIN_GAINED_TOKENS = 2
MAX_CACHED_ENTRIES = 1 << 16  # per automaton (an entry is ~300 bytes); beyond it, plans are recomputed
_MISSING = object()


class JumpForward(NamedTuple):
    """Replace the last `rollback` tokens (0 or 1) by `tokens`; the automaton is then in `state`.

    `forced` is the text the jump adds beyond `last_token`'s own bytes.
    """

    rollback: int
    tokens: list[int]
    state: int
    forced: bytes


def _utf8_text(data: bytes) -> tuple[str, int] | None:
    """(text, bytes used) for the longest prefix of data ending on a UTF-8 boundary (trims <= 3 bytes)."""
    for cut in range(0, min(4, len(data) + 1)):
        try:
            return data[: len(data) - cut].decode("utf-8"), len(data) - cut
        except UnicodeDecodeError:
            continue
    return None


def _walk(fsm: TokenAutomaton, state: int, tokens: list[int]) -> list[int] | None:
    """The states after each of tokens from state, or None if one is not allowed."""
    states = []
    for t in tokens:
        state = fsm.next_state(state, t)
        if state < 0 or t in fsm.eos_ids:
            return None
        states.append(state)
    return states


def plan_jump_forward(
    fsm: TokenAutomaton, vocab: TokenVocab, *, prev_state: int, last_token: int, state: int
) -> JumpForward | None:
    """The jump after last_token moved prev_state -> state, or None if not worth it / not possible.

    Cached on the automaton (fsm.jump_plans, at most MAX_CACHED_ENTRIES): the plan by (prev_state,
    last_token, state), and the retokenization it starts from by (last_token, state), which requests
    share more often (prev_state is often a free-text length counter). Requests under one constraint
    meet the same forced strings; retokenizing costs ~0.1 ms. The returned plan is shared: callers
    must not mutate its token list. Reads the automaton and calls vocab.encode; fills the caches.
    """
    forced = fsm.forced_bytes(state)
    if not forced:
        return None
    cache = fsm.jump_plans
    key = (vocab.key, prev_state, last_token, state)
    plan = cache.get(key, _MISSING)
    if plan is _MISSING:
        ids_key = (vocab.key, -1, last_token, state)  # prev_state -1: the retokenization
        ids = cache.get(ids_key, _MISSING)
        if ids is _MISSING:
            ids = _retokenize(vocab, last_token, forced)
            _store(cache, ids_key, ids)
        plan = None if ids is None else _plan(fsm, vocab, ids, prev_state, last_token, state)
        _store(cache, key, plan)
    return plan


def _store(cache: dict, key: tuple, value: object) -> None:
    if len(cache) < MAX_CACHED_ENTRIES:
        cache[key] = value  # one dict store: safe under the GIL when engines share the automaton


def _retokenize(vocab: TokenVocab, last_token: int, forced: bytes) -> list[int] | None:
    """The tokenizer's ids for last_token's bytes + forced (cut at a UTF-8 boundary); None if the cut
    adds nothing to last_token or the tokenizer does not give those bytes back."""
    last_bytes = vocab.token_bytes[last_token]
    decoded = _utf8_text(last_bytes + forced)
    if decoded is None:
        return None
    text, used = decoded
    if used <= len(last_bytes):
        return None
    ids = vocab.encode(text)
    if vocab.decode_bytes(ids) != last_bytes + forced[: used - len(last_bytes)]:
        return None  # tokenizer is not lossless on this text (normalisation, prefix space)
    return ids


def _plan(fsm: TokenAutomaton, vocab: TokenVocab, ids: list[int], prev_state: int, last_token: int,
          state: int) -> JumpForward | None:
    """The plan from the retokenized ids (not mutated): roll last_token back if the tokenizer merges it."""
    last_bytes = vocab.token_bytes[last_token]
    if ids and ids[0] == last_token:
        rollback, start, new = 0, state, ids[1:]
    else:
        rollback, start, new = 1, prev_state, ids
    states = _walk(fsm, start, new)
    if states is None:
        return None
    end = states[-1] if states else start
    if not fsm.is_terminal(end):
        new = new[:-1]  # the last token may merge with what the model writes next
        end = states[-2] if len(states) >= 2 else start
    if len(new) - rollback < MIN_GAINED_TOKENS:
        return None
    appended = vocab.decode_bytes(new)
    if rollback:
        if not appended.startswith(last_bytes) or len(appended) <= len(last_bytes):
            return None
        appended = appended[len(last_bytes):]
    return JumpForward(rollback=rollback, tokens=list(new), state=end, forced=appended)
