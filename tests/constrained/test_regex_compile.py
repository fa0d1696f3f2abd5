"""regex -> TokenAutomaton internals: the index decoder, match semantics, numeric-bound regexes."""
from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from corpus import CHARACTER_CARD

from jaxsgl.constrained import REGEX_FLOAT, ConstraintSpec, compile_constraint, compile_regex
from jaxsgl.constrained.index_decode import decode_index, decode_varints
from jaxsgl.constrained.json_schema import integer_range_regex, number_range_regex, schema_to_regex
from jaxsgl.constrained.regex_compile import _index_or_error, outlines_vocabulary


def _varint(v: int) -> bytes:
    if v < 251:
        return bytes([v])
    if v < 2**16:
        return b"\xfb" + v.to_bytes(2, "little")
    if v < 2**32:
        return b"\xfc" + v.to_bytes(4, "little")
    return b"\xfd" + v.to_bytes(8, "little")


def test_varints_with_payload_bytes_that_look_like_prefixes():
    rng = random.Random(0)
    special = [251, 252, 253, 255, 0xFBFB, 0xFCFB, 0xFDFC, 0xFBFBFB, 2**32 + 0xFB, 65535, 65536, 0]
    values = special + [rng.choice([rng.randrange(251), rng.randrange(2**16), rng.randrange(2**33)])
                        for _ in range(3000)]
    blob = b"".join(_varint(v) for v in values)
    assert decode_varints(blob).tolist() == values


def test_decoder_matches_outlines_dict_api(smol_vocab):
    outlines_vocab, sentinel, _ = outlines_vocabulary(smol_vocab)
    regex = schema_to_regex(json.dumps(CHARACTER_CARD))
    index = _index_or_error(regex, sentinel, outlines_vocab)
    decoded = decode_index(index.__reduce__()[1][0])
    table = index.get_transitions()
    expect = sorted((s, t, n) for s, row in table.items() for t, n in row.items())
    got = sorted(zip(decoded.src.tolist(), decoded.token.tolist(), decoded.dst.tolist()))
    assert got == expect and len(got) > 100_000
    assert decoded.initial_state == index.get_initial_state()
    assert set(decoded.final_states.tolist()) == index.get_final_states()
    assert set(decoded.states.tolist()) == set(table)


def test_prefix_alternatives_are_all_reachable(ascii_vocab):
    # outlines-core alone (leftmost-first DFA) drops "ab" from (a|ab) and "0." from REGEX_FLOAT.
    for regex, texts in [("(a|ab)", ["a", "ab"]), ("(0|0\\.5)", ["0", "0.5"]), (REGEX_FLOAT, ["0.5", "12", ".5"]),
                         ("(yes|yes sir)", ["yes", "yes sir"])]:
        fsm = compile_regex(regex, ascii_vocab)
        for text in texts:
            state = 0
            for ch in text:
                state = fsm.next_state(state, ascii_vocab.encode(ch)[0])
                assert state >= 0, (regex, text)
            assert fsm.is_accepting(state), (regex, text)


def test_anchors_are_ignored(ascii_vocab):
    plain = compile_regex("[a-c]+x", ascii_vocab)
    anchored = compile_regex("^[a-c]+x$", ascii_vocab)
    assert np.array_equal(plain.mask, anchored.mask) and np.array_equal(plain.trans_next, anchored.trans_next)
    literal_dollar = compile_regex(r"a\$", ascii_vocab)
    assert literal_dollar.is_accepting(literal_dollar.next_state(literal_dollar.next_state(0, ascii_vocab.encode("a")[0]),
                                                                  ascii_vocab.encode("$")[0]))


def test_integer_ranges_exact():
    rng = random.Random(1)
    cases = [(0, 120), (-5, 3), (-10, -3), (7, 7), (0, 0), (None, 5), (-20, None), (None, None), (15, 1234)]
    cases += [tuple(sorted((rng.randint(-400, 400), rng.randint(-400, 400)))) for _ in range(40)]
    for lo, hi in cases:
        pattern = re.compile(integer_range_regex(lo, hi))
        for n in range(-600, 1600):
            inside = (lo is None or n >= lo) and (hi is None or n <= hi)
            assert bool(pattern.fullmatch(str(n))) == inside, (lo, hi, n)
        assert not pattern.fullmatch("-0") and not pattern.fullmatch("007")
    assert integer_range_regex(5, 4) is None


def test_number_ranges_are_sound():
    rng = random.Random(2)
    for lo, hi, lo_ex, hi_ex in [(0, 1, False, False), (-3.5, 2.5, True, False), (-10, -2, False, True),
                                 (None, 0, False, True), (1.5, None, True, False), (-1, 1, True, True)]:
        pattern = re.compile(number_range_regex(lo, hi, lo_ex, hi_ex))
        for _ in range(3000):
            text = f"{rng.uniform(-15, 15):.{rng.randint(0, 3)}f}"
            if pattern.fullmatch(text):
                x = float(text)
                assert (lo is None or (x > lo if lo_ex else x >= lo)) and (hi is None or (x < hi if hi_ex else x <= hi))
        for ok in ([str(v) for v in (0, 1)] if (lo, hi) == (0, 1) else []):
            assert pattern.fullmatch(ok)


def test_bounded_schema_compiles_with_bounds(ascii_vocab):
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 12}},
              "required": ["n"]}
    fsm = compile_constraint(ConstraintSpec("json_schema", json.dumps(schema)), ascii_vocab,
                             json_whitespace_pattern="")
    def accepts(text: str) -> bool:
        state = 0
        for t in ascii_vocab.encode(text):
            state = fsm.next_state(state, t)
            if state < 0:
                return False
        return fsm.is_accepting(state)
    assert accepts('{"n":3}') and accepts('{"n":12}')
    assert not accepts('{"n":2}') and not accepts('{"n":13}') and not accepts('{"n":120}')


@pytest.mark.parametrize("regex", ["[a-z]{2,4}", "(foo|bar)+baz?", REGEX_FLOAT])
def test_integrity_and_initial_state(ascii_vocab, regex):
    fsm = compile_regex(regex, ascii_vocab)
    fsm.check_integrity()
    assert fsm.nbytes == sum(a.nbytes for a in (fsm.accepting, fsm.mask, fsm.trans_start, fsm.trans_token,
                                                 fsm.trans_next))
    assert fsm.num_allowed(0) > 0
