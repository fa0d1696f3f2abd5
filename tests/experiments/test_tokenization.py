"""Tokenization boundaries (experiments/tokenization.py) with a toy BPE-like tokenizer: fast, no model files."""
from __future__ import annotations

import re

import pytest

from experiments import tokenization as tz

# Like byte-level BPE pre-tokenization: a word takes the space before it; newlines at the very end of a
# text are one token, elsewhere each newline is its own token; a trailing space is a token of its own.
_PAT = re.compile(r" ?\w+|\n+\Z|\n|[^\w\s]+| +")
_VOCAB: dict[str, int] = {}


def toy_encode(text: str) -> tuple[list[int], list[int]]:
    ids, ends = [], []
    for m in _PAT.finditer(text):
        ids.append(_VOCAB.setdefault(m.group(), len(_VOCAB)))
        ends.append(m.end())
    return ids, ends


def test_hand_made_boundaries_are_detected() -> None:
    nl = tz.check(tz.Boundary("t", "newline", "Answer: B\n\n", "Answer: B\n\nThe end"), toy_encode, page_size=1)
    assert nl["broken"] and nl["shortfall"] == 1 and nl["lost_tokens"] == 1
    ok = tz.check(tz.Boundary("t", "space-led", "Answer:", "Answer: B\n\nNext", gen=" B"), toy_encode, page_size=1)
    assert not ok["broken"] and ok["shortfall"] == 0 and ok["lost_tokens"] == 0
    sp = tz.check(tz.Boundary("t", "trailing", "Answer: ", "Answer: B\n\nNext", gen="B"), toy_encode, page_size=1)
    assert sp["broken"] and sp["shortfall"] == 2  # the lone space and the generated "B"
    assert tz.check(tz.Boundary("t", "k", "Answer: B\n\n", "Answer: B\n\nThe end"), toy_encode, page_size=16)["lost_tokens"] == 0
    with pytest.raises(ValueError):
        tz.Boundary("t", "k", "abc", "abd")


def test_cache_hits_against_the_text_level_ideal() -> None:
    shared = "one two three four\n\n"
    calls = [tz.Call("g", shared), tz.Call("g", shared + "five six"), tz.Call("g", shared + "seven eight")]
    rows = tz.cache_hits(calls, toy_encode, page_size=1)
    assert [r["ideal"] for r in rows] == [0, 6, 6]  # the shared text: 4 words and "\n" "\n"
    assert [r["hit"] for r in rows] == [0, 4, 6]    # call 1: the cached "\n\n" is one token; call 2 reuses call 1's
    s = tz.hit_summary(rows)
    assert s["lost_tokens"] == 2 and s["requests_losing"] == 1
    chain = [tz.Call("c", "Q: a b\nA:", " yes"), tz.Call("c", "Q: a b\nA: yes\nQ: c\nA:")]
    rows = tz.cache_hits(chain, toy_encode, page_size=1)
    assert rows[1]["hit"] == rows[1]["ideal"] == len(toy_encode("Q: a b\nA: yes")[0])
    spaced = [tz.Call("c", "Q: a b\nA: ", "yes"), tz.Call("c", "Q: a b\nA: yes\nQ: c\nA:")]
    rows = tz.cache_hits(spaced, toy_encode, page_size=1)
    assert rows[1]["hit"] == len(toy_encode("Q: a b\nA:")[0]) < rows[1]["ideal"]


def test_rates_group_by_workload_and_kind() -> None:
    bs = [tz.Boundary("w", "nl", "x\n\n", "x\n\ny"), tz.Boundary("w", "nl", "x\n", "x\ny"),
          tz.Boundary("w", "sp", "x ", "x y")]
    r = tz.rates([tz.check(b, toy_encode, page_size=1) for b in bs])
    assert r.loc[("w", "nl"), "broken_rate"] == 0.5 and r.loc[("w", "sp"), "broken_rate"] == 1.0
    assert r.loc[("w", "nl"), "n"] == 2
