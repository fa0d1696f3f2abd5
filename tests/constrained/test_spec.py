"""ConstraintSpec from SGLang sampling params and OpenAI response_format."""
from __future__ import annotations

import json
import re

import pytest

from jaxsgl.constrained import (
    JSON_OBJECT_GRAMMAR,
    REGEX_BOOL,
    REGEX_FLOAT,
    REGEX_INT,
    REGEX_STR,
    ConstraintError,
    ConstraintSpec,
    compile_constraint,
    constraint_from_params,
    spec_from_response_format,
)


def test_sglang_constants_verbatim():
    assert REGEX_INT == r"[-+]?[0-9]+[ \n]*"
    assert REGEX_FLOAT == r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
    assert REGEX_BOOL == r"(True|False)"
    assert REGEX_STR == r"\"[\w\d\s]*\""


def test_params_to_spec():
    assert constraint_from_params() is None
    assert constraint_from_params(regex="a+") == ConstraintSpec("regex", "a+")
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    from_dict = constraint_from_params(json_schema=schema)
    assert from_dict.kind == "json_schema" and json.loads(from_dict.source) == schema
    assert constraint_from_params(json_schema=json.dumps(schema)).source == json.dumps(schema)
    assert constraint_from_params(ebnf='root ::= "x"') == ConstraintSpec("ebnf", 'root ::= "x"')
    for dtype, regex in [(int, REGEX_INT), ("float", REGEX_FLOAT), (str, REGEX_STR), ("bool", REGEX_BOOL)]:
        assert constraint_from_params(dtype=dtype) == ConstraintSpec("regex", regex)
    assert hash(ConstraintSpec("regex", "a")) == hash(ConstraintSpec("regex", "a"))


@pytest.mark.parametrize("kwargs", [
    {"regex": "a", "json_schema": {}},
    {"choices": ["a"], "dtype": int},
    {"choices": []},
    {"choices": ["a", ""]},
    {"choices": ["a", 3]},
    {"dtype": "complex"},
    {"json_schema": "{not json"},
    {"json_schema": "[1, 2]"},
    {"ebnf": "  "},
])
def test_params_errors(kwargs):
    with pytest.raises(ValueError):
        constraint_from_params(**kwargs)


def test_choices_escape_every_meta_char(ascii_vocab):
    choices = ["a.b", "(c)", "d|e", "x*+?", "[y]{2}", "^$\\", "tab\there"]
    spec = constraint_from_params(choices=choices)
    assert spec.kind == "choices"
    pattern = re.compile(spec.source)
    for c in choices:
        assert pattern.fullmatch(c)
    assert not pattern.fullmatch("axb") and not pattern.fullmatch("c")
    fsm = compile_constraint(spec, ascii_vocab)
    for c in choices:  # each choice is a path through the automaton ending in an accepting state
        state = 0
        for t in ascii_vocab.encode(c):
            state = fsm.next_state(state, t)
            assert state >= 0, c
        assert fsm.is_accepting(state)


def test_response_format():
    assert spec_from_response_format(None) is None
    assert spec_from_response_format({"type": "text"}) is None
    assert spec_from_response_format({"type": "json_object"}) == ConstraintSpec("ebnf", JSON_OBJECT_GRAMMAR)
    schema = {"type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}
    spec = spec_from_response_format({"type": "json_schema",
                                      "json_schema": {"name": "t", "schema": schema, "strict": True}})
    assert spec.kind == "json_schema" and json.loads(spec.source) == schema
    for bad in [{"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {"name": "t"}},
                "json_object"]:
        with pytest.raises(ConstraintError):
            spec_from_response_format(bad)
    with pytest.raises(ConstraintError):
        ConstraintSpec("yaml", "x")
