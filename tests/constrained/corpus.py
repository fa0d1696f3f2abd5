"""Seeded corpora of constraints for soundness tests (host walks here, engine sampling in the lead's tests).

Every item compiles at the embedded SmolLM2 vocabulary (49152 tokens). Regexes stay inside the
syntax Rust's regex crate (outlines-core) and Python's `re` read the same way: no \\w \\d \\s,
no lookaround, no backreferences; so `re.fullmatch` is a valid checker for the decoded text.
Schemas use what `jaxsgl.constrained.json_schema` enforces, so `jsonschema.validate` is a valid checker.
"""
from __future__ import annotations

import random

from jaxsgl.constrained.regex_compile import byte_dfa_profile
from jaxsgl.constrained.spec import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, escape_regex_literal

# Size cap on corpus regexes, from the byte DFA (no tokenizer needed): states, and transitions at
# a 49k vocabulary if each first byte started 49152 / 256 tokens.
MAX_DFA_STATES = 120
MAX_EST_TRANSITIONS = 500_000

_WORDS = ["yes", "no", "foo", "bar", "Paris", "2024", "a-b", "x.y", "(1)", "$5", "café", "über",
          "日本", "hello world", "a+b", "[x]", "{k}", "q?", "1|2", "tab\there", "line\nbreak", "^up$"]
_CLASSES = ["[a-z]", "[A-Z]", "[0-9]", "[aeiou]", "[xyz]", "[0-9a-f]", "[-+]", "[.!?]", "[é-ü]"]
# Wide atoms match a large share of a 49k vocabulary's tokens, and each automaton state inside one
# holds that many transitions: at most one per regex, and never under a counted repeat.
_WIDE = [".", "[^,\\n]", "[^\"]", "[ -~]", "[a-zA-Z0-9_]"]
_SGLANG = [REGEX_INT, REGEX_FLOAT, REGEX_BOOL]


class _Budget:
    def __init__(self) -> None:
        self.wide_left = 1


def _atom(rng: random.Random, depth: int, budget: _Budget) -> tuple[str, bool]:
    """(atom, is_wide)."""
    roll = rng.random()
    if depth > 0 and roll < 0.2:
        return "(" + _alternation(rng, depth - 1, budget) + ")", False
    if roll < 0.55:
        return escape_regex_literal(rng.choice(_WORDS)), False
    if roll < 0.9 or not budget.wide_left:
        return rng.choice(_CLASSES), False
    budget.wide_left -= 1
    return rng.choice(_WIDE), True


def _quantified(rng: random.Random, depth: int, budget: _Budget) -> str:
    wide_before = budget.wide_left
    atom, wide = _atom(rng, depth, budget)
    if rng.random() < 0.45:
        return atom
    if wide or budget.wide_left != wide_before:  # a wide atom inside: only ?, *, +
        quant = rng.choice(["?", "*", "+"])
    else:
        low = rng.randint(0, 3)
        quant = rng.choice(["?", "*", "+", f"{{{low}}}", f"{{{low},{low + rng.randint(1, 3)}}}", f"{{{low},}}"])
    if len(atom) == 1 or atom.startswith("[") or (atom.startswith("(") and atom.endswith(")")):
        return atom + quant
    return "(" + atom + ")" + quant


def _sequence(rng: random.Random, depth: int, budget: _Budget) -> str:
    if rng.random() < 0.1:
        return "(" + rng.choice(_SGLANG) + ")"
    return "".join(_quantified(rng, depth, budget) for _ in range(rng.randint(1, 3)))


def _alternation(rng: random.Random, depth: int, budget: _Budget) -> str:
    return "|".join(_sequence(rng, depth, budget) for _ in range(rng.randint(1, 3)))


def regex_corpus(n: int = 300, seed: int = 0) -> list[str]:
    """n random regexes (literals incl. non-ASCII, classes, groups, bounded/unbounded repeats, SGLang's),
    each small enough to compile at a 49k vocabulary in well under a second."""
    rng = random.Random(seed)
    out: list[str] = []
    while len(out) < n:
        regex = _alternation(rng, depth=1, budget=_Budget())
        if regex in out:
            continue
        states, per_byte = byte_dfa_profile(regex)
        if states <= MAX_DFA_STATES and int(per_byte.sum()) * 192 <= MAX_EST_TRANSITIONS:
            out.append(regex)
    return out


_PATTERNS = ["^[a-z]+$", "^[A-Z][a-z]{1,6}$", "^[0-9]{3}-[0-9]{4}$", "^(red|green|blue)$", "^[a-f0-9]{4,8}$"]
_KEYS = ["name", "age", "id", "tags", "level", "score", "ok", "note", "class", "alignment", "items",
         "owner", "price", "count", "kind", "meta", "email", "ratio", "enabled", "parent"]


def _bounds(rng: random.Random, integer: bool) -> dict:
    lo = rng.randint(-50, 50)
    hi = lo + rng.randint(1, 500)
    roll = rng.random()
    out: dict = {}
    if roll < 0.7:
        out["minimum"] = lo
    if roll > 0.3:
        out["maximum"] = hi
    if not integer and rng.random() < 0.3 and "maximum" in out:
        out["maximum"] = hi + 0.5
    if rng.random() < 0.2:
        key = rng.choice([k for k in ("minimum", "maximum") if k in out])
        out["exclusiveMinimum" if key == "minimum" else "exclusiveMaximum"] = out.pop(key)
    return out


def _leaf(rng: random.Random) -> dict:
    kind = rng.choice(["string", "string", "integer", "integer", "number", "boolean", "null", "enum"])
    if kind == "string":
        roll = rng.random()
        if roll < 0.3:
            low = rng.randint(0, 3)
            return {"type": "string", "minLength": low, "maxLength": low + rng.randint(0, 5)}
        if roll < 0.5:
            return {"type": "string", "pattern": rng.choice(_PATTERNS)}
        return {"type": "string"}
    if kind in ("integer", "number"):
        schema: dict = {"type": kind}
        if rng.random() < 0.6:
            schema.update(_bounds(rng, kind == "integer"))
        return schema
    if kind == "enum":
        pool = ["warrior", "mage", "rogue", "good", "evil", "neutral", 1, 2, 3, "x y", "Ünïcode"]
        return {"enum": rng.sample(pool, rng.randint(1, 4))}
    return {"type": kind}


def _schema(rng: random.Random, depth: int) -> dict:
    roll = rng.random()
    if depth > 0 and roll < 0.2:
        return _object(rng, depth - 1)
    if depth > 0 and roll < 0.4:
        items = _schema(rng, depth - 1) if rng.random() < 0.3 else _leaf(rng)
        array: dict = {"type": "array", "items": items}
        if rng.random() < 0.7:
            low = rng.randint(0, 2)
            array["minItems"] = low
            array["maxItems"] = low + rng.randint(0, 3)
        return array
    return _leaf(rng)


def _object(rng: random.Random, depth: int) -> dict:
    keys = rng.sample(_KEYS, rng.randint(1, 5))
    properties = {key: _schema(rng, depth) for key in keys}
    required = [key for key in keys if rng.random() < 0.7]
    schema: dict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def schema_corpus(n: int = 100, seed: int = 0) -> list[dict]:
    """n random object schemas: nesting, arrays with min/maxItems, enums, string patterns/lengths,
    bounded integers and numbers, optional fields, booleans, nulls."""
    rng = random.Random(seed)
    return [_object(rng, depth=2) for _ in range(n)]


CHARACTER_CARD = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "class": {"enum": ["warrior", "mage", "rogue", "cleric"]},
        "alignment": {"enum": ["lawful good", "neutral", "chaotic evil"]},
        "alive": {"type": "boolean"},
        "items": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 4},
    },
    "required": ["name", "age", "class", "alignment", "alive", "items"],
}
