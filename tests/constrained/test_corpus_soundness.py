"""Host-level soundness at the real 49152-token vocabulary: random walks through each compiled
corpus item end in text that `re.fullmatch` / `jsonschema.validate` accept.

CI runs a seeded subset (REGEX_SUBSET regexes, SCHEMA_SUBSET schemas); JAXSGL_FULL_CORPUS=1 runs all
300 + 100 (about ten minutes on two busy cores).
"""
from __future__ import annotations

import json
import os
import random
import re

import jsonschema
import pytest
from corpus import CHARACTER_CARD, regex_corpus, schema_corpus
from walks import distance_to_accept, random_walk

from jaxsgl.constrained import ConstraintSpec, GrammarCompiler

FULL = os.environ.get("JAXSGL_FULL_CORPUS") == "1"
REGEX_SUBSET, SCHEMA_SUBSET, WALKS = 24, 8, 4
REGEXES = regex_corpus()
SCHEMAS = schema_corpus()


def _pick(items: list, subset: int) -> list[int]:
    return list(range(len(items))) if FULL else sorted(random.Random(7).sample(range(len(items)), subset))


@pytest.fixture(scope="module")
def compiler(smol_vocab):
    compiler = GrammarCompiler(smol_vocab, max_workers=1)
    yield compiler
    compiler.shutdown()


def _walk_texts(fsm, vocab, seed: int) -> list[str]:
    rng = random.Random(seed)
    dist = distance_to_accept(fsm)
    texts = []
    for _ in range(WALKS):
        tokens, _ = random_walk(fsm, rng, dist=dist, budget=24, p_stop=0.3)
        assert tokens[-1] in vocab.eos_ids
        texts.append(vocab.decode_bytes(tokens).decode("utf-8"))
    return texts


@pytest.mark.parametrize("i", _pick(REGEXES, REGEX_SUBSET))
def test_regex_corpus_walks_fullmatch(compiler, smol_vocab, i):
    regex = REGEXES[i]
    fsm = compiler.compile(ConstraintSpec("regex", regex))
    for text in _walk_texts(fsm, smol_vocab, seed=i):
        assert re.fullmatch(regex, text), (regex, text)


@pytest.mark.parametrize("i", _pick(SCHEMAS, SCHEMA_SUBSET))
def test_schema_corpus_walks_validate(compiler, smol_vocab, i):
    schema = SCHEMAS[i]
    fsm = compiler.compile(ConstraintSpec("json_schema", json.dumps(schema)))
    for text in _walk_texts(fsm, smol_vocab, seed=1000 + i):
        jsonschema.validate(json.loads(text), schema)


def test_character_card_walks_validate(compiler, smol_vocab):
    fsm = compiler.compile(ConstraintSpec("json_schema", json.dumps(CHARACTER_CARD)))
    for text in _walk_texts(fsm, smol_vocab, seed=5):
        jsonschema.validate(json.loads(text), CHARACTER_CARD)


def test_corpora_are_seeded_and_sized():
    assert regex_corpus(5, seed=3) == regex_corpus(5, seed=3) != regex_corpus(5, seed=4)
    assert len(REGEXES) == 300 and len(set(REGEXES)) == 300 and len(SCHEMAS) == 100
    text = json.dumps(SCHEMAS)
    for feature in ['"minItems"', '"maxItems"', '"enum"', '"pattern"', '"minLength"', '"maxLength"',
                    '"minimum"', '"maximum"', '"exclusiveMinimum"', '"type": "boolean"', '"type": "null"',
                    '"type": "number"', '"type": "array"']:
        assert feature in text, feature
