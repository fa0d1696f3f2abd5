"""ConstraintSpec: what a request constrains its output to, normalised from SGLang/OpenAI parameters.

A spec is frozen and hashable: together with `TokenVocab.key` it is the compile-cache key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from jaxsgl.constrained.errors import ConstraintError

ConstraintKind = Literal["regex", "json_schema", "choices", "ebnf"]
KINDS: tuple[str, ...] = ("regex", "json_schema", "choices", "ebnf")

# Exactly as SGLang defines them in sglang/lang/ir.py.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_BOOL = r"(True|False)"
REGEX_STR = r"\"[\w\d\s]*\""

_DTYPE_REGEX: dict[Any, str] = {
    "int": REGEX_INT, int: REGEX_INT,
    "float": REGEX_FLOAT, float: REGEX_FLOAT,
    "str": REGEX_STR, str: REGEX_STR,
    "bool": REGEX_BOOL, bool: REGEX_BOOL,
}

# Any JSON object, as a Lark grammar for llguidance (outlines' regex for {"type": "object"} takes
# seconds to index and tens of MB: a grammar matcher is the right tool for an open-ended object).
JSON_OBJECT_GRAMMAR = 'start: %json {"type": "object"}'

# Characters that are meta in both Rust's regex crate and Python's re; escaping only these keeps
# the escaped text valid in both dialects.
_REGEX_META = set("\\.+*?()|[]{}^$")


@dataclass(frozen=True)
class ConstraintSpec:
    """A constraint: `kind` says how to read `source` (regex text, JSON-schema text, choices regex, grammar)."""

    kind: ConstraintKind
    source: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConstraintError(f"unknown constraint kind {self.kind!r}; expected one of {KINDS}")
        if not isinstance(self.source, str):
            raise ConstraintError(f"constraint source must be a str, got {type(self.source).__name__}")


def escape_regex_literal(text: str) -> str:
    """text as a regex matching exactly itself (valid in Rust's regex crate and Python's re)."""
    out = []
    for ch in text:
        if ch in _REGEX_META:
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def choices_regex(choices: list[str]) -> str:
    """Alternation matching exactly one of choices."""
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ConstraintError("choices must be a non-empty list of strings")
    for c in choices:
        if not isinstance(c, str) or not c:
            raise ConstraintError(f"every choice must be a non-empty string, got {c!r}")
    return "(" + "|".join(escape_regex_literal(c) for c in choices) + ")"


def _schema_text(json_schema: Any) -> str:
    if isinstance(json_schema, dict):
        return json.dumps(json_schema)
    if isinstance(json_schema, str):
        try:
            parsed = json.loads(json_schema)
        except json.JSONDecodeError as e:
            raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
        if not isinstance(parsed, dict):
            raise ConstraintError(f"json_schema must be a JSON object, got {type(parsed).__name__}")
        return json_schema
    raise ConstraintError(f"json_schema must be a dict or a JSON string, got {type(json_schema).__name__}")


def constraint_from_params(
    *,
    regex: str | None = None,
    json_schema: dict | str | None = None,
    ebnf: str | None = None,
    choices: list[str] | None = None,
    dtype: Any = None,
) -> ConstraintSpec | None:
    """The spec for SGLang-style sampling parameters; None when nothing is constrained.

    Raises ValueError (ConstraintError) when more than one constraint is given or one is malformed.
    """
    given = {
        name: value
        for name, value in (("regex", regex), ("json_schema", json_schema), ("ebnf", ebnf),
                            ("choices", choices), ("dtype", dtype))
        if value is not None
    }
    if len(given) > 1:
        raise ConstraintError(f"only one of regex, json_schema, ebnf, choices, dtype may be set; got {sorted(given)}")
    if regex is not None:
        if not isinstance(regex, str):
            raise ConstraintError(f"regex must be a str, got {type(regex).__name__}")
        return ConstraintSpec("regex", regex)
    if json_schema is not None:
        return ConstraintSpec("json_schema", _schema_text(json_schema))
    if ebnf is not None:
        if not isinstance(ebnf, str) or not ebnf.strip():
            raise ConstraintError("ebnf must be a non-empty grammar string")
        return ConstraintSpec("ebnf", ebnf)
    if choices is not None:
        return ConstraintSpec("choices", choices_regex(list(choices) if isinstance(choices, tuple) else choices))
    if dtype is not None:
        try:
            return ConstraintSpec("regex", _DTYPE_REGEX[dtype])
        except (KeyError, TypeError):
            raise ConstraintError(f"dtype must be one of int, float, str, bool; got {dtype!r}") from None
    return None


def spec_from_response_format(response_format: dict | None) -> ConstraintSpec | None:
    """The spec for an OpenAI `response_format`: text -> None, json_object -> any object, json_schema -> schema."""
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise ConstraintError(f"response_format must be an object, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return ConstraintSpec("ebnf", JSON_OBJECT_GRAMMAR)
    if kind == "json_schema":
        body = response_format.get("json_schema")
        if not isinstance(body, dict):
            raise ConstraintError("response_format json_schema needs a 'json_schema' object")
        schema = body.get("schema", body.get("schema_"))
        if schema is None:
            raise ConstraintError("response_format json_schema needs 'json_schema.schema'")
        return ConstraintSpec("json_schema", _schema_text(schema))
    raise ConstraintError(f"unsupported response_format type {kind!r}; expected text, json_object or json_schema")
