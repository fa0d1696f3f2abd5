"""Mask completeness: on a ~300-token vocabulary the allowed set equals a brute-force oracle.

Token t is allowed after text T iff T + t is a prefix of some full match (the `regex` package's
partial fullmatch); EOS iff T fully matches. Checked in every state a few random walks visit.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
import regex as regex_pkg
from walks import random_walk

from jaxsgl.constrained import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, choices_regex, compile_regex

ORACLE_REGEXES = [
    REGEX_INT,
    REGEX_FLOAT,
    REGEX_BOOL,
    r"(yes|no|maybe)",
    r"[a-z]{2,5}",
    r"[0-9]{3}-[0-9]{4}",
    r"(ab)*c?",
    r"hello( world)?!",
    r'\{"name":"[a-zA-Z ]{1,8}","age":[0-9]{1,2}\}',
    r"(foo|bar|foobar)+",
    r"[^,\n]*,",
    r"a.{0,3}z",
    r"(-?(0|[1-9][0-9]*))(\.[0-9]+)?",
    r"(true|false|null)",
    r"x(\t|\n)y",
    choices_regex(["a.b", "(c)", "d|e", "12"]),
]


def _oracle_allowed(pattern: regex_pkg.Pattern, text: str, token_text: list[str | None], eos: int) -> set[int]:
    allowed = {t for t, piece in enumerate(token_text)
               if piece and pattern.fullmatch(text + piece, partial=True) is not None}
    if pattern.fullmatch(text) is not None:
        allowed.add(eos)
    return allowed


@pytest.mark.parametrize("source", ORACLE_REGEXES)
def test_mask_equals_bruteforce_oracle(ascii_vocab, source):
    fsm = compile_regex(source, ascii_vocab)
    fsm.check_integrity()
    pattern = regex_pkg.compile(source)
    token_text = [b.decode() if b else None for b in ascii_vocab.token_bytes]
    eos = ascii_vocab.eos_ids[0]
    rng = random.Random(hash(source) % 1000)
    checked: dict[int, str] = {}
    for _ in range(6):
        tokens, states = random_walk(fsm, rng, budget=12, p_stop=0.2)
        text = ""
        for state, token in zip(states, tokens):
            if state not in checked:
                checked[state] = text
                expect = _oracle_allowed(pattern, text, token_text, eos)
                got = set(fsm.allowed_tokens(state).tolist())
                assert got == expect, (
                    f"state {state} after {text!r}: extra {sorted(token_text[t] or t for t in got - expect)[:8]}, "
                    f"missing {sorted(token_text[t] or t for t in expect - got)[:8]}")
            text += ascii_vocab.token_bytes[token].decode()
        assert pattern.fullmatch(text), (source, text)
    assert len(checked) >= 2 or fsm.num_states == 1


def test_next_state_agrees_with_mask(ascii_vocab):
    fsm = compile_regex(r"[a-c]{1,3}(x|yz)", ascii_vocab)
    for state in range(fsm.num_states):
        allowed = set(fsm.allowed_tokens(state).tolist())
        for token in range(ascii_vocab.vocab_size):
            nxt = fsm.next_state(state, token)
            assert (nxt >= 0) == (token in allowed)
            if token in fsm.eos_ids and nxt >= 0:
                assert nxt == state and fsm.is_accepting(state)
    terminal = [s for s in range(fsm.num_states) if fsm.is_terminal(s)]
    assert terminal and all(fsm.allowed_tokens(s).tolist() == [0] for s in terminal)


def test_mask_layout_bits(ascii_vocab):
    fsm = compile_regex("ab", ascii_vocab)
    assert fsm.mask.dtype == np.uint32 and fsm.mask.shape == (fsm.num_states, (ascii_vocab.vocab_size + 31) // 32)
    a_ids = [t for t, b in enumerate(ascii_vocab.token_bytes) if b in (b"a", b"ab")]
    for t in a_ids:
        assert fsm.mask[0, t // 32] >> (t % 32) & 1
    assert fsm.trans_token.dtype == np.int32 and fsm.trans_next.dtype == np.int32
    assert fsm.trans_start.dtype == np.int32 and fsm.accepting.dtype == bool
