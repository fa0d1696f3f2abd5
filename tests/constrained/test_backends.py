"""grammar_backend ("outlines" | "llguidance") and the JSON whitespace pattern, on the host.

The llguidance backend compiles regex / choices / json_schema to an EbnfGrammar (host masks);
walks through its masks satisfy the constraint, its masks agree with the outlines token automaton
(a subset: llguidance allows only the canonical tokenization of a forced string), and the option
names parse as SGLang's flags.
"""
from __future__ import annotations

import json
import random
import re
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from corpus import CHARACTER_CARD, regex_corpus, schema_corpus

from jaxsgl.constrained import (GRAMMAR_BACKENDS, ConstraintError, ConstraintSpec, EbnfGrammar, GrammarCompiler,
                                TokenAutomaton, compile_constraint, host_side)

REPO = Path(__file__).resolve().parents[2]
# No forced multi-byte strings on their paths: both backends allow exactly the same tokens there.
FREE_REGEXES = [r"[0-9]{2,4}", r"[a-z]{1,8}", r"(-)?[0-9]{1,3}(\.[0-9]{1,2})?", r"[A-Z][a-z]{0,6}"]
FORCED_REGEXES = [r"(yes|no)", r'\{"a": [0-9]+, "b": "(x|y)"\}', r"Answer: (A|B|C|D)\."]
SCHEMA = {"type": "object", "properties": {"character_name": {"type": "string"}, "hit_points": {"type": "integer"},
                                           "alignment": {"enum": ["lawful good", "chaotic evil"]}},
          "required": ["character_name", "hit_points", "alignment"]}
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def allowed(mask: np.ndarray, vocab_size: int) -> set[int]:
    return set(np.flatnonzero(np.unpackbits(mask.view(np.uint8), bitorder="little")[:vocab_size]).tolist())


def walk(grammar: EbnfGrammar, vocab, rng: random.Random, budget: int = 30) -> tuple[str, bool]:
    """(text, finished): random allowed tokens, preferring short ones after the budget, until EOS."""
    matcher, mask = grammar.matcher(), np.zeros((vocab.vocab_size + 31) // 32, np.uint32)
    out: list[int] = []
    for step in range(budget * 4):
        if matcher.is_terminated():
            return vocab.decode_bytes(out).decode("utf-8"), True
        matcher.fill_mask(mask)
        ok = allowed(mask, vocab.vocab_size)
        eos = set(vocab.eos_ids) & ok
        if eos and (step >= budget or rng.random() < 0.2):
            matcher.consume([min(eos)])
            return vocab.decode_bytes(out).decode("utf-8"), True
        ok -= eos
        if step >= budget:  # head for the end: the shortest tokens close strings and brackets soonest
            shortest = min(len(vocab.token_bytes[t]) for t in ok)
            ok = {t for t in ok if len(vocab.token_bytes[t]) == shortest and vocab.token_bytes[t] not in (b" ", b"\\")}
        token = rng.choice(sorted(ok))
        matcher.consume([token])
        out.append(token)
    return vocab.decode_bytes(out).decode("utf-8", errors="replace"), False


def test_unknown_backend_lists_the_choices(ascii_vocab):
    from jaxsgl.engine.options import GRAMMAR_BACKENDS as OPTION_CHOICES, EngineOptions

    assert OPTION_CHOICES == GRAMMAR_BACKENDS == ("outlines", "llguidance")
    for make in (lambda: compile_constraint(ConstraintSpec("regex", "a"), ascii_vocab, backend="xgrammar"),
                 lambda: GrammarCompiler(ascii_vocab, processes=False, backend="xgrammar"),
                 lambda: EngineOptions.from_kwargs(None, {"grammar_backend": "xgrammar"})):
        with pytest.raises(ValueError, match="outlines, llguidance"):
            make()
    assert EngineOptions().grammar_backend == "outlines" and EngineOptions().constrained_json_whitespace_pattern is None


def test_sglang_flag_names():
    from jaxsgl.engine.options import EngineOptions
    from jaxsgl.server.launch import build_parser, config_from_args

    args = build_parser().parse_args(["--grammar-backend", "llguidance", "--constrained-json-whitespace-pattern", ""])
    opts = EngineOptions.from_kwargs(None, config_from_args(args).engine_options)
    assert opts.grammar_backend == "llguidance" and opts.constrained_json_whitespace_pattern == ""
    opts = EngineOptions.from_kwargs(None, config_from_args(build_parser().parse_args([])).engine_options)
    assert opts.grammar_backend == "outlines" and opts.constrained_json_whitespace_pattern is None


def test_every_kind_goes_to_llguidance(smol_vocab):
    for spec in (ConstraintSpec("regex", "[0-9]+"), ConstraintSpec("choices", "(a|b)"),
                 ConstraintSpec("json_schema", json.dumps(SCHEMA))):
        assert host_side(spec, "llguidance") and not host_side(spec, "outlines")
        assert isinstance(compile_constraint(spec, smol_vocab, backend="llguidance"), EbnfGrammar)
        assert isinstance(compile_constraint(spec, smol_vocab), TokenAutomaton)
    assert host_side(ConstraintSpec("ebnf", "root ::= \"a\""), "outlines")


def test_empty_language_regex_is_an_error(smol_vocab):
    with pytest.raises(ConstraintError, match="invalid regex"):
        compile_constraint(ConstraintSpec("regex", r"[^\x00-\x{10FFFF}]"), smol_vocab, backend="llguidance")


@pytest.mark.parametrize("bad", ["(unclosed", "a{5,2}", "[]"])
def test_bad_regex_is_a_clear_error(smol_vocab, bad):
    with pytest.raises(ConstraintError, match="invalid regex") as e:
        compile_constraint(ConstraintSpec("regex", bad), smol_vocab, backend="llguidance")
    assert "regex parse error" in str(e.value)
    with pytest.raises(ConstraintError, match="invalid JSON schema"):
        compile_constraint(ConstraintSpec("json_schema", '{"type": "object", "properties": {"a": {"type": "nope"}}}'),
                           smol_vocab, backend="llguidance")


def test_llguidance_walks_satisfy_the_corpus(smol_vocab):
    regexes, schemas = regex_corpus()[::10], schema_corpus()[::10] + [CHARACTER_CARD]
    rng, done = random.Random(3), 0
    for regex in regexes:
        grammar = compile_constraint(ConstraintSpec("regex", regex), smol_vocab, backend="llguidance")
        for _ in range(2):
            text, finished = walk(grammar, smol_vocab, rng)
            if finished:
                done += 1
                assert re.fullmatch(regex, text), (regex, text)
    for schema in schemas:
        spec = ConstraintSpec("json_schema", json.dumps(schema))
        grammar = compile_constraint(spec, smol_vocab, backend="llguidance")
        text, finished = walk(grammar, smol_vocab, rng, budget=60)
        if finished:
            done += 1
            jsonschema.validate(json.loads(text), schema)
    assert done >= (2 * len(regexes) + len(schemas)) // 2


def test_llguidance_masks_are_the_canonical_subset_of_the_automaton(smol_vocab):
    """Along walks, llguidance's allowed set is a subset of the automaton's, equal wherever no byte is
    forced; where bytes are forced it keeps only their canonical tokenization (`Answer`, not `A`/`An`).
    So greedy outputs agree on FREE_REGEXES and may differ on FORCED_REGEXES."""
    mask = np.zeros((smol_vocab.vocab_size + 31) // 32, np.uint32)
    narrower = 0
    for regex in FREE_REGEXES + FORCED_REGEXES + regex_corpus()[::25]:
        spec = ConstraintSpec("regex", regex)
        fsm, grammar = compile_constraint(spec, smol_vocab), compile_constraint(spec, smol_vocab, backend="llguidance")
        for seed in range(3):
            rng, matcher, state = random.Random(seed), grammar.matcher(), 0
            for _ in range(30):
                matcher.fill_mask(mask)
                ll, ou = allowed(mask, smol_vocab.vocab_size), set(fsm.allowed_tokens(state).tolist())
                assert ll <= ou, (regex, sorted(ll - ou)[:5])
                if matcher.forced_bytes():
                    narrower += ll != ou
                else:
                    assert ll == ou, (regex, [smol_vocab.token_bytes[t] for t in sorted(ou - ll)[:5]])
                choices = sorted(ll - set(smol_vocab.eos_ids))
                if not choices:
                    break
                token = rng.choice(choices)
                matcher.consume([token])
                state = fsm.next_state(state, token)
                if matcher.is_terminated():
                    break
    assert narrower > 0  # the forced regexes do show the difference


def test_default_json_whitespace_is_outlines():
    from outlines_core.json_schema import WHITESPACE

    from jaxsgl.constrained.ebnf import DEFAULT_JSON_WHITESPACE

    assert DEFAULT_JSON_WHITESPACE == WHITESPACE == "[ ]?"


@pytest.mark.parametrize("backend", GRAMMAR_BACKENDS)
def test_json_whitespace_pattern(smol_vocab, backend):
    spec = ConstraintSpec("json_schema", json.dumps(SCHEMA))
    compact, spaced = '{"character_name":"Bob","hit_points":12,"alignment":"lawful good"}', \
        '{"character_name": "Bob", "hit_points": 12, "alignment": "lawful good"}'

    def accepts(compiled, text: str) -> bool:
        if isinstance(compiled, TokenAutomaton):
            return _fsm_accepts(compiled, smol_vocab.encode(text))
        matcher = compiled.matcher()
        try:
            matcher.consume(smol_vocab.encode(text))
        except ConstraintError:
            return False
        return matcher.is_accepting()

    default = compile_constraint(spec, smol_vocab, backend=backend)
    tight = compile_constraint(spec, smol_vocab, backend=backend, json_whitespace_pattern="")
    assert accepts(default, compact) and accepts(default, spaced)
    assert accepts(tight, compact) and not accepts(tight, spaced)
    if backend == "llguidance":  # compact JSON forces the keys: longer fast-forward strings
        assert tight.matcher().forced_bytes() == b'{"character_name":"'
        assert default.matcher().forced_bytes() == b"{"
        rng = random.Random(0)
        for _ in range(3):
            text, finished = walk(tight, smol_vocab, rng, budget=40)
            if finished:
                jsonschema.validate(json.loads(text), SCHEMA)
                assert not re.search(r"\s", _STRINGS.sub("", text)), text


def _fsm_accepts(fsm: TokenAutomaton, tokens: list[int]) -> bool:
    state = 0
    for t in tokens:
        state = fsm.next_state(state, t)
        if state < 0:
            return False
    return fsm.is_accepting(state)


def test_compile_cache_key_includes_the_options(smol_vocab):
    spec = ConstraintSpec("json_schema", json.dumps(SCHEMA))
    loose = GrammarCompiler(smol_vocab, processes=False, backend="llguidance")
    tight = GrammarCompiler(smol_vocab, processes=False, backend="llguidance", json_whitespace_pattern="")
    try:
        a, b = loose.compile(spec), tight.compile(spec)
        assert a is not b and a.matcher().forced_bytes() != b.matcher().forced_bytes()
        assert loose.compile(spec) is a and loose.stats.hits == 1
        assert loose._key(spec) != tight._key(spec)
    finally:
        loose.shutdown()
        tight.shutdown()


def test_character_regex_compiles_fast_with_llguidance(smol_vocab):
    """SGLang's json_jump_forward character regex with Unicode [\\w\\d\\s]{1,16} fields: outlines-core
    indexes each field in ~10 s on our CPU; llguidance compiles lazily (timings printed)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from constrained import character_regex

    spec = ConstraintSpec("regex", character_regex())
    start = time.perf_counter()
    grammar = compile_constraint(spec, smol_vocab, backend="llguidance")
    compiled = time.perf_counter() - start
    matcher, mask = grammar.matcher(), np.zeros((smol_vocab.vocab_size + 31) // 32, np.uint32)
    start = time.perf_counter()
    matcher.consume(smol_vocab.encode('{\n    "name": "Harry'))
    matcher.fill_mask(mask)
    first_mask = time.perf_counter() - start
    print(f"character regex (Unicode classes), llguidance: compile {compiled * 1e3:.1f} ms, "
          f"consume + first in-string mask {first_mask * 1e3:.1f} ms")
    assert len(allowed(mask, smol_vocab.vocab_size)) > 1000  # inside a free-text field
    assert compiled < 5.0  # loose: ~10-30 ms measured; outlines-core needs ~40 s for this regex


def test_json_object_follows_a_set_pattern(smol_vocab):
    from jaxsgl.constrained import spec_from_response_format

    spec = spec_from_response_format({"type": "json_object"})
    for pattern, spaced_ok in ((None, True), ("", False)):
        grammar = compile_constraint(spec, smol_vocab, json_whitespace_pattern=pattern)
        matcher = grammar.matcher()
        matcher.consume(smol_vocab.encode('{"a":[1,{"b":null}]}'))
        assert matcher.is_accepting()
        spaced = grammar.matcher()
        try:
            spaced.consume(smol_vocab.encode('{"a": [1, {"b": null}]}'))
            ok = spaced.is_accepting()
        except ConstraintError:
            ok = False
        assert ok == spaced_ok, pattern
