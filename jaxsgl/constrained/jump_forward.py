"""Jump-forward: append a state's forced string in one extend step, retokenized as the tokenizer would.

After the model samples `last_token` (prev_state -> state), the forced bytes of `state` are known
without running the model. Appending them token by token from the automaton would give odd
tokenizations (`"`,`n`,`a`,`m`,`e`), which hurt the model; so `last_token`'s bytes plus the forced
bytes are retokenized with the real tokenizer (`vocab.encode`), and `last_token` is rolled back
when the tokenizer would merge it with what follows.

The final retokenized token is held back unless the forced string ends in a terminal state: it
may merge with what the model writes next (`"` then `,` is `",` in many vocabularies), and
forcing the split form is the known quality problem of jump-forward (sglang issue #2045).
"""
from __future__ import annotations

from typing import NamedTuple

from jaxsgl.constrained.automaton import TokenAutomaton
from jaxsgl.constrained.vocab import TokenVocab

MIN_APPENDED_TOKENS = 2  # one extend step costs about one decode step: a 1-token jump gains nothing


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


def _walk(fsm: TokenAutomaton, state: int, tokens: list[int]) -> int:
    """State after tokens from state, or -1 if one is not allowed."""
    for t in tokens:
        state = fsm.next_state(state, t)
        if state < 0 or t in fsm.eos_ids:
            return -1
    return state


def plan_jump_forward(
    fsm: TokenAutomaton, vocab: TokenVocab, *, prev_state: int, last_token: int, state: int
) -> JumpForward | None:
    """The jump after last_token moved prev_state -> state, or None if not worth it / not possible.

    Pure: reads the automaton (its forced-string cache may fill) and calls vocab.encode.
    """
    forced = fsm.forced_bytes(state)
    if not forced:
        return None
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
    if ids and ids[0] == last_token:
        rollback, start, new = 0, state, ids[1:]
    else:
        rollback, start, new = 1, prev_state, ids
    end = _walk(fsm, start, new)
    if end < 0:
        return None
    if not fsm.is_terminal(end):
        new = new[:-1]  # the last token may merge with what the model writes next
        end = _walk(fsm, start, new)
    if len(new) < MIN_APPENDED_TOKENS:
        return None
    appended = vocab.decode_bytes(new)
    if rollback:
        if not appended.startswith(last_bytes) or len(appended) <= len(last_bytes):
            return None
        appended = appended[len(last_bytes):]
    return JumpForward(rollback=rollback, tokens=list(new), state=end, forced=appended)
