"""Constrained decoding through the Engine: soundness over a generated corpus (a random model at
temperature 1 explores the automata), jump-forward, and equivalence across loops and the cache; the
grammar_backend and constrained_json_whitespace_pattern options."""
from __future__ import annotations

import json
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import pytest
import regex as partial_re

from jaxsgl.constrained import REGEX_FLOAT, REGEX_INT, REGEX_STR
from tests.constrained.corpus import regex_corpus, schema_corpus

# (jump-forward, overlap, page size). CI runs a half fraction of the 2x2x2 design (each setting of each
# factor twice) and splits the corpus between them, so every regex and schema runs once; with
# JAXSGL_FULL_CORPUS=1 all 8 configurations run the whole corpus.
FULL = os.environ.get("JAXSGL_FULL_CORPUS") == "1"
CONFIGS = [(jf, ovl, ps) for jf in (True, False) for ovl in (True, False) for ps in (16, 1)
           if FULL or (jf == ovl) == (ps == 16)]
MAX_NEW = 40


def corpus_slice(k: int) -> tuple[list[str], list[dict]]:
    regexes, schemas = regex_corpus(300), schema_corpus(100)
    if FULL:
        return regexes, schemas
    n = len(CONFIGS)
    return regexes[k::n], schemas[k::n]


def check_regex(pattern: str, out: dict) -> None:
    text, reason = out["text"], out["meta_info"]["finish_reason"]["type"]
    if reason == "stop":
        assert re.fullmatch(pattern, text, flags=re.DOTALL) or re.fullmatch(pattern, text), (pattern, text)
    else:  # cut by max_new_tokens: still a prefix of some match (maybe ending inside a UTF-8 character)
        assert reason == "length" and partial_re.fullmatch(pattern, text.rstrip("\ufffd"), partial=True), \
            (pattern, text, reason)


def check_schema(schema: dict, out: dict) -> None:
    text, reason = out["text"], out["meta_info"]["finish_reason"]["type"]
    if reason == "stop":
        jsonschema.validate(json.loads(text), schema)
    else:
        assert reason == "length"


@pytest.mark.parametrize("k,config", list(enumerate(CONFIGS)), ids=[f"jf{int(j)}-ovl{int(o)}-ps{p}"
                                                                     for j, o, p in CONFIGS])
def test_every_output_satisfies_its_constraint(tiny_model_dir, k, config):
    from jaxsgl.engine.engine import Engine

    jump, overlap, page_size = config
    regexes, schemas = corpus_slice(k)
    with Engine(str(tiny_model_dir), dtype="float32", page_size=page_size, disable_overlap_schedule=not overlap,
                disable_regex_jump_forward=not jump, max_running_requests=32, max_total_tokens=8192,
                debug_check_integrity=True) as eng:
        prompts = [f"Item {i}:" for i in range(len(regexes) + len(schemas))]
        params = [{"max_new_tokens": MAX_NEW, "temperature": 1.0, "seed": 1000 * k + i, "regex": r}
                  for i, r in enumerate(regexes)]
        params += [{"max_new_tokens": 3 * MAX_NEW, "temperature": 1.0, "seed": 7 + i, "json_schema": json.dumps(s)}
                   for i, s in enumerate(schemas)]
        t0 = time.perf_counter()
        outs = eng.generate(prompts, params)
        print(f"{len(outs)} constrained requests in {time.perf_counter() - t0:.1f}s; compiler {eng.grammar.compiler.stats}")
        for r, o in zip(regexes, outs):
            check_regex(r, o)
        for s, o in zip(schemas, outs[len(regexes):]):
            check_schema(s, o)
        finished = sum(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
        assert finished >= len(outs) // 3, f"only {finished}/{len(outs)} constrained outputs completed"
        if jump:
            assert sum(o["meta_info"]["jump_forward_tokens"] for o in outs) > 0
        else:
            assert all(o["meta_info"]["jump_forward_tokens"] == 0 for o in outs)
        eng.scheduler.check_integrity()
        eng.grammar.pool.check_integrity()
        assert eng.grammar.pool.num_pinned == 0 and not eng.scheduler.running


# SGLang's json_jump_forward character regex with ASCII classes: its [\w\d\s] (Unicode) takes outlines-core
# ~10 s per field to index on this CPU (benchmarks/constrained.py runs the original).
CHARACTER = (r'\{\n    "name": "[a-zA-Z0-9 ]{1,16}",\n    "house": "(Gryffindor|Slytherin|Ravenclaw|Hufflepuff)",\n'
             r'    "blood status": "(Pure-blood|Half-blood|Muggle-born)",\n    "wand": \{\n'
             r'        "wood": "[a-zA-Z0-9 ]{1,16}",\n        "core": "[a-zA-Z0-9 ]{1,16}",\n'
             r'        "length": [0-9]{1,2}\.[0-9]{0,2}\n    \},\n    "alive": "(Alive|Deceased)"\n\}')
SMALL = [r"(yes|no)", r"[0-9]{2,4}", r'\{"a": [0-9]+, "b": "(x|y)"\}', r"Answer: (A|B|C|D)\.", CHARACTER]


def test_greedy_equivalence_across_loops_and_cache(tiny_model_dir):
    """Jump-forward off, greedy: token-identical with overlap on/off and the radix cache on/off."""
    from jaxsgl.engine.engine import Engine

    prompts = [f"Question {i}: pick" for i in range(len(SMALL))] * 2
    params = [{"max_new_tokens": 60, "temperature": 0, "regex": r} for r in SMALL] * 2
    results = []
    for overlap, cache in ((True, True), (False, True), (True, False), (False, False)):
        with Engine(str(tiny_model_dir), dtype="float32", disable_overlap_schedule=not overlap,
                    disable_radix_cache=not cache, disable_regex_jump_forward=True, debug_check_integrity=True,
                    max_total_tokens=4096) as eng:
            results.append([o["output_ids"] for o in eng.generate(prompts, params)])
    assert results[1:] == results[:1] * 3


def test_jump_forward_saves_steps_and_keeps_the_text_valid(tiny_model_dir):
    from jaxsgl.engine.engine import Engine

    outs, steps = {}, {}
    for jump in (True, False):
        with Engine(str(tiny_model_dir), dtype="float32", disable_regex_jump_forward=not jump,
                    debug_check_integrity=True, max_total_tokens=4096) as eng:
            before = len(eng.trace())
            outs[jump] = eng.generate(["A character card:"] * 4, [{"max_new_tokens": 200, "temperature": 1.0,
                                                                   "seed": s, "regex": CHARACTER} for s in range(4)])
            steps[jump] = len(eng.trace()) - before
    for o in outs[True] + outs[False]:
        check_regex(CHARACTER, o)
    assert sum(o["meta_info"]["jump_forward_tokens"] for o in outs[True]) >= 40
    assert steps[True] * 1.5 <= steps[False], steps


def test_bad_constraints_fail_alone(tiny_model_dir):
    from jaxsgl.engine.engine import Engine

    with Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, max_total_tokens=4096) as eng:
        with pytest.raises(ValueError, match="only one of"):
            eng.generate("x", {"regex": "a", "json_schema": "{}"})
        with pytest.raises(ValueError):
            eng.generate("x", {"json_schema": "{not json"})
        good = {"max_new_tokens": 8, "temperature": 0, "regex": "(ok|fine)"}
        for bad in ("(unclosed", "a{5,2}", "[]"):  # invalid, inverted bounds, empty language
            with pytest.raises(ValueError) as e:
                eng.generate("x", {"max_new_tokens": 8, "regex": bad})
            assert "regex" in str(e.value).lower() or "match" in str(e.value).lower(), str(e.value)
            assert eng.generate("x", good)["text"] in ("ok", "fine")
        with ThreadPoolExecutor(3) as pool:  # a bad constraint among concurrent good ones
            futs = [pool.submit(eng.generate, "x", p) for p in (good, {"max_new_tokens": 8, "regex": "(x"}, good)]
            with pytest.raises(ValueError):
                futs[1].result(timeout=300)
            assert all(f.result(timeout=300)["text"] in ("ok", "fine") for f in (futs[0], futs[2]))
        eng.scheduler.check_integrity()
        assert eng.grammar.pool.num_pinned == 0


def test_sglang_regex_constants_in_a_regex_built_json(default_model_dir):
    from jaxsgl.engine.engine import Engine

    pattern = (r'\{\n  "name": ' + REGEX_STR + r',\n  "age": ' + REGEX_INT + r',\n  "height": ' + REGEX_FLOAT +
               r'\n\}')
    with Engine(max_total_tokens=4096, max_running_requests=4) as eng:
        out = eng.generate("Give the name, age and height (m) of a famous person as JSON.\n",
                           {"max_new_tokens": 64, "temperature": 0, "regex": pattern})
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        assert re.fullmatch(pattern, out["text"])
        card = {"type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24}, "class": {"enum": ["warrior", "mage", "rogue"]},
            "level": {"type": "integer", "minimum": 1, "maximum": 99},
            "skills": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3}},
            "required": ["name", "class", "level", "skills"]}
        out = eng.generate("Write a character card for a fantasy game as JSON.\n",
                           {"max_new_tokens": 120, "temperature": 0, "json_schema": json.dumps(card)})
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), card)
        n = eng.generate("How many legs does a spider have? Answer:", {"max_new_tokens": 8, "temperature": 0,
                                                                     "regex": REGEX_INT})
        assert int(n["text"].strip()) >= 0


ARITH = '''root ::= expr
expr ::= term (("+" | "-") term)*
term ::= num | "(" expr ")"
num ::= [0-9] | [1-9] [0-9]'''


def parse_arith(text: str) -> bool:
    """A recursive-descent parser for ARITH: True iff text is a complete expression."""
    pos = 0

    def expr() -> bool:
        nonlocal pos
        if not term():
            return False
        while pos < len(text) and text[pos] in "+-":
            pos += 1
            if not term():
                return False
        return True

    def term() -> bool:
        nonlocal pos
        if pos < len(text) and text[pos] == "(":
            pos += 1
            if not expr() or pos >= len(text) or text[pos] != ")":
                return False
            pos += 1
            return True
        m = re.match(r"[1-9][0-9]|[0-9]", text[pos:])
        if not m:
            return False
        pos += m.end()
        return True

    return expr() and pos == len(text)


@pytest.mark.parametrize("overlap", [True, False])
def test_ebnf_outputs_parse(tiny_model_dir, overlap):
    from jaxsgl.engine.engine import Engine

    with Engine(str(tiny_model_dir), dtype="float32", disable_overlap_schedule=not overlap,
                debug_check_integrity=True, max_total_tokens=4096) as eng:
        outs = eng.generate(["Compute:"] * 12, [{"max_new_tokens": 64, "temperature": 1.0, "seed": s, "ebnf": ARITH}
                                                for s in range(12)])
        done = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
        assert len(done) >= 4
        for o in done:
            assert parse_arith(o["text"]), o["text"]
        with pytest.raises(ValueError):
            eng.generate("x", {"max_new_tokens": 4, "ebnf": "root ::= ( unclosed"})
        eng.scheduler.check_integrity()


@pytest.mark.parametrize("where", ["fill_mask", "consume"])
def test_a_matcher_failing_mid_decode_fails_its_request_alone(tiny_model_dir, monkeypatch, where):
    """A host matcher (EBNF) that errors while masking or advancing fails its own request with that
    error; the other EBNF request and an unconstrained one, in the same batches, finish as they
    would have; no page or grammar pin leaks."""
    from jaxsgl.constrained import ConstraintError
    from jaxsgl.constrained.ebnf import EbnfGrammar, EbnfMatcher
    from jaxsgl.engine.engine import Engine

    prompts = ["Compute:", "Compute: 2", "Hello"]
    params = [{"max_new_tokens": 24, "temperature": 0, "ebnf": ARITH},
              {"max_new_tokens": 24, "temperature": 0, "ebnf": ARITH + " "},  # its own grammar (cache key)
              {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}]
    with Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, max_total_tokens=4096) as eng:
        want = eng.generate(prompts, params)
        real_call, real_make, calls = getattr(EbnfMatcher, where), EbnfGrammar.matcher, {}

        def matcher(self):  # the first request's grammar (ARITH exactly) makes doomed matchers
            m = real_make(self)
            m.doomed = self.source == ARITH
            return m

        def flaky(self, *a, **kw):
            calls[id(self)] = n = calls.get(id(self), 0) + 1
            if getattr(self, "doomed", False) and n == 3:
                raise ConstraintError("simulated matcher failure")
            return real_call(self, *a, **kw)

        monkeypatch.setattr(EbnfGrammar, "matcher", matcher)
        monkeypatch.setattr(EbnfMatcher, where, flaky)
        with ThreadPoolExecutor(3) as pool:
            futs = [pool.submit(eng.generate, p, sp) for p, sp in zip(prompts, params)]
            with pytest.raises(ValueError, match="simulated matcher failure"):
                futs[0].result(timeout=300)
            assert [f.result(timeout=300)["output_ids"] for f in futs[1:]] == [w["output_ids"] for w in want[1:]]
        eng.scheduler.check_integrity()
        assert eng.grammar.pool.num_pinned == 0 and not eng.states


# ---- options: grammar_backend and constrained_json_whitespace_pattern ------------------------------------

FREE_REGEXES = [r"[0-9]{2,4}", r"[a-z]{1,8}", r"(-)?[0-9]{1,3}(\.[0-9]{1,2})?", r"[A-Z][a-z]{0,6}"]
CARD = {"type": "object", "properties": {"character_name": {"type": "string", "maxLength": 12},
                                         "hit_points": {"type": "integer"},
                                         "alignment": {"enum": ["lawful good", "chaotic evil"]}},
        "required": ["character_name", "hit_points", "alignment"]}
_JSON_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


def test_llguidance_backend_outputs_satisfy_the_corpus(tiny_model_dir):
    """grammar_backend="llguidance": regexes and schemas compiled by llguidance, masked on the host per
    step (overlap on, jump-forward = llguidance's fast-forward tokens), at temperature 1."""
    from jaxsgl.engine.engine import Engine

    regexes, schemas = regex_corpus(300)[::10], schema_corpus(100)[::10]
    with Engine(str(tiny_model_dir), dtype="float32", grammar_backend="llguidance", max_running_requests=32,
                max_total_tokens=8192, debug_check_integrity=True) as eng:
        params = [{"max_new_tokens": MAX_NEW, "temperature": 1.0, "seed": i, "regex": r} for i, r in enumerate(regexes)]
        params += [{"max_new_tokens": 3 * MAX_NEW, "temperature": 1.0, "seed": 7 + i, "json_schema": json.dumps(s)}
                   for i, s in enumerate(schemas)]
        params += [{"max_new_tokens": 200, "temperature": 1.0, "seed": s, "regex": CHARACTER} for s in range(2)]
        t0 = time.perf_counter()
        outs = eng.generate([f"Item {i}:" for i in range(len(params))], params)
        print(f"{len(outs)} llguidance-constrained requests in {time.perf_counter() - t0:.1f}s; "
              f"compiler {eng.grammar.compiler.stats}")
        for r, o in zip(regexes, outs):
            check_regex(r, o)
        for s, o in zip(schemas, outs[len(regexes):]):
            check_schema(s, o)
        for o in outs[-2:]:
            check_regex(CHARACTER, o)
        finished = sum(o["meta_info"]["finish_reason"]["type"] == "stop" for o in outs)
        assert finished >= len(outs) // 3, f"only {finished}/{len(outs)} constrained outputs completed"
        assert sum(o["meta_info"]["jump_forward_tokens"] for o in outs[-2:]) >= 20  # the card's keys, fast-forwarded
        assert eng.grammar.tables is None  # nothing went to the device tables
        with pytest.raises(ValueError, match="invalid regex") as e:  # a bad regex fails its request only
            eng.generate("x", {"max_new_tokens": 8, "regex": "(unclosed"})
        assert "unclosed group" in str(e.value)
        with pytest.raises(ValueError, match="no output can satisfy"):  # an empty language, found at compile time
            eng.generate("x", {"max_new_tokens": 8, "regex": r"[^\x00-\x{10FFFF}]"})
        good = {"max_new_tokens": 8, "temperature": 0, "regex": "(ok|fine)"}
        assert eng.generate("x", good)["text"] in ("ok", "fine")
        eng.scheduler.check_integrity()
        assert not eng.scheduler.running


def test_backends_agree_greedy_where_nothing_is_forced(tiny_model_dir):
    """Jump-forward off, greedy: the same tokens from both backends on regexes that never force a
    multi-byte string. (Where bytes are forced, llguidance allows only their canonical tokenization,
    e.g. `Answer` but not `A`, so a model that prefers `A` legitimately diverges: see
    tests/constrained/test_backends.py.)"""
    from jaxsgl.engine.engine import Engine

    prompts = [f"Question {i}: pick" for i in range(2 * len(FREE_REGEXES))]
    params = [{"max_new_tokens": 24, "temperature": 0, "regex": r} for r in FREE_REGEXES] * 2
    results = {}
    for backend in ("outlines", "llguidance"):
        with Engine(str(tiny_model_dir), dtype="float32", grammar_backend=backend, disable_regex_jump_forward=True,
                    debug_check_integrity=True, max_total_tokens=4096) as eng:
            outs = eng.generate(prompts, params)
        for r, o in zip(params, outs):
            check_regex(r["regex"], o)
        results[backend] = [o["output_ids"] for o in outs]
    assert results["outlines"] == results["llguidance"]


def test_compact_json_whitespace_pattern_forces_more_tokens(tiny_model_dir):
    """constrained_json_whitespace_pattern="" (SGLang's flag): compact JSON, still valid; its keys and
    punctuation are forced, so jump-forward appends more tokens than with the default `[ ]?`."""
    from jaxsgl.engine.engine import Engine

    params = [{"max_new_tokens": 80, "temperature": 1.0, "seed": s, "json_schema": json.dumps(CARD)} for s in range(6)]
    jumped, steps = {}, {}
    for pattern in (None, ""):
        with Engine(str(tiny_model_dir), dtype="float32", constrained_json_whitespace_pattern=pattern,
                    debug_check_integrity=True, max_total_tokens=4096) as eng:
            before = len(eng.trace())
            outs = eng.generate(["A character card:"] * len(params), params)
            steps[pattern] = len(eng.trace()) - before
        done = [o for o in outs if o["meta_info"]["finish_reason"]["type"] == "stop"]
        assert len(done) >= 3
        for o in done:
            jsonschema.validate(json.loads(o["text"]), CARD)
            if pattern == "":
                assert not re.search(r"\s", _JSON_STRINGS.sub("", o["text"])), o["text"]
        jumped[pattern] = sum(o["meta_info"]["jump_forward_tokens"] for o in outs)
    print(f"jump-forward tokens: default {jumped[None]}, compact {jumped['']}; steps {steps}")
    assert jumped[""] > jumped[None]


def test_shared_compiler_per_backend_and_pattern():
    from jaxsgl.constrained import TokenVocab
    from jaxsgl.engine.grammar import shared_compiler

    vocab = TokenVocab([b"", b"a", b"b", b"{", b"}"], [0])
    default = shared_compiler(vocab)
    assert shared_compiler(vocab) is default
    assert shared_compiler(vocab, json_whitespace_pattern="") is not default
    assert shared_compiler(vocab, backend="llguidance") is not default
    with pytest.raises(ValueError, match="outlines, llguidance"):
        shared_compiler(vocab, backend="xgrammar")
