"""EBNF/Lark grammars through llguidance: masks, consume/rollback, fast-forward tokens."""
from __future__ import annotations

import random
import re

import numpy as np
import pytest

from jaxsgl.constrained import ConstraintError, ConstraintSpec, EbnfGrammar, compile_constraint

ARITH_GBNF = r"""
root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"
"""
ARITH_LARK = r"""
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""
TOOL_GBNF = r"""
root ::= "<tool>" name "(" arg ("," " "? arg)* ")</tool>"
name ::= "get_weather" | "search"
arg ::= [a-z]+ "=" ([0-9]+ | "\"" [a-z ]* "\"")
"""
TOOL_CALL = re.compile(r'<tool>(get_weather|search)\(([a-z]+=([0-9]+|"[a-z ]*"))(, ?[a-z]+=([0-9]+|"[a-z ]*"))*\)</tool>')


def is_arithmetic(text: str) -> bool:
    """Recursive-descent check of the arithmetic grammar."""
    pos = 0

    def factor() -> bool:
        nonlocal pos
        if pos < len(text) and text[pos].isdigit():
            while pos < len(text) and text[pos].isdigit():
                pos += 1
            return True
        if pos < len(text) and text[pos] == "(":
            pos += 1
            if not expr() or pos >= len(text) or text[pos] != ")":
                return False
            pos += 1
            return True
        return False

    def chain(item, ops: str) -> bool:
        nonlocal pos
        if not item():
            return False
        while pos < len(text) and text[pos] in ops:
            pos += 1
            if not item():
                return False
        return True

    def term() -> bool:
        return chain(factor, "*/")

    def expr() -> bool:
        return chain(term, "+-")

    return expr() and pos == len(text)


def _allowed(mask: np.ndarray, vocab_size: int) -> np.ndarray:
    return np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab_size])


_CLOSING = set(b')"</>')


def _walk(grammar: EbnfGrammar, vocab, rng: random.Random, budget: int = 25) -> str:
    """Random tokens from the mask until EOS; after the budget prefer EOS, then closing punctuation,
    then single bytes other than "(" (so every walk ends)."""
    matcher = grammar.matcher()
    mask = np.zeros((vocab.vocab_size + 31) // 32, np.uint32)
    out: list[int] = []
    for step in range(budget * 4):
        matcher.fill_mask(mask)
        allowed = _allowed(mask, vocab.vocab_size)
        eos_ok = any(e in allowed for e in vocab.eos_ids)
        assert eos_ok == matcher.is_accepting()
        if eos_ok and (step >= budget or rng.random() < 0.15):
            break
        if step >= budget:
            closing = [t for t in allowed if vocab.token_bytes[t] and set(vocab.token_bytes[t]) <= _CLOSING]
            short = [t for t in allowed if len(vocab.token_bytes[t]) == 1 and vocab.token_bytes[t] != b"("]
            allowed = closing if closing and rng.random() < 0.5 else (short or allowed)
        token = int(rng.choice(list(allowed)))
        matcher.consume([token])
        out.append(token)
    else:
        pytest.fail("walk did not finish")
    matcher.consume([vocab.eos_ids[0]])
    assert matcher.is_terminated()
    return vocab.decode_bytes(out).decode("utf-8")


@pytest.mark.parametrize("source", [ARITH_GBNF, ARITH_LARK])
def test_arithmetic_walks_parse(smol_vocab, source):
    grammar = compile_constraint(ConstraintSpec("ebnf", source), smol_vocab)
    assert isinstance(grammar, EbnfGrammar)
    rng = random.Random(0)
    for _ in range(6):
        text = _walk(grammar, smol_vocab, rng)
        assert is_arithmetic(text), text


def test_tool_call_walks_match(smol_vocab):
    grammar = EbnfGrammar(TOOL_GBNF, smol_vocab)
    rng = random.Random(1)
    for _ in range(6):
        text = _walk(grammar, smol_vocab, rng, budget=20)
        assert TOOL_CALL.fullmatch(text), text


def test_matcher_consume_rollback_forced(smol_vocab):
    grammar = EbnfGrammar('root ::= "The answer is " [0-9]+ "."', smol_vocab)
    matcher = grammar.matcher()
    forced = matcher.forced_tokens()
    assert b"The answer is ".startswith(smol_vocab.decode_bytes(forced)) and len(forced) >= 3
    assert matcher.forced_bytes() == b"The answer is "
    matcher.consume(smol_vocab.encode("The answer is 42"))
    assert not matcher.is_accepting()
    matcher.consume(smol_vocab.encode("."))
    assert matcher.is_accepting() and matcher.is_terminated()
    mask = np.zeros((smol_vocab.vocab_size + 31) // 32, np.uint32)
    matcher.fill_mask(mask)
    assert _allowed(mask, smol_vocab.vocab_size).tolist() == list(smol_vocab.eos_ids)
    matcher.rollback(1)
    assert not matcher.is_accepting()
    matcher.fill_mask(mask)
    assert smol_vocab.encode("7")[0] in _allowed(mask, smol_vocab.vocab_size)
    with pytest.raises(ConstraintError):
        matcher.consume(smol_vocab.encode("x"))
    fresh = grammar.matcher()  # matchers are independent copies
    assert fresh.forced_tokens() == forced
    with pytest.raises(ValueError):
        fresh.fill_mask(np.zeros(3, np.uint32))


def test_json_object_grammar(smol_vocab):
    from jaxsgl.constrained import spec_from_response_format

    grammar = compile_constraint(spec_from_response_format({"type": "json_object"}), smol_vocab)
    matcher = grammar.matcher()
    matcher.consume(smol_vocab.encode('{"a": [1, {"b": null}]}'))
    assert matcher.is_accepting()
    with pytest.raises(ConstraintError):
        grammar.matcher().consume(smol_vocab.encode("[1]"))
