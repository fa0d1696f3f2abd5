"""JSON schema -> regex, through outlines-core, with numeric bounds it would otherwise ignore.

outlines-core's `build_regex_from_schema` drops `minimum`/`maximum` (and the exclusive forms) of
integers and numbers, so a walk could emit 500 for `maximum: 120`. Before calling it, each bounded
numeric subschema is replaced by a string const placeholder; afterwards the placeholder's literal in
the regex is swapped for a range regex built here. Integer ranges are exact; number ranges are a
sound subset (integers in range, and decimals whose whole unit interval lies in range).
"""
from __future__ import annotations

import json
import math
from typing import Any

from jaxsgl.constrained.errors import ConstraintError

_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_PLACEHOLDER = "JAXSGLRANGE{}Z"
_FRACTION = r"\.[0-9]+"


def _digits_range(lo: str, hi: str) -> str:
    """Regex for decimal strings of equal length n with lo <= s <= hi (leading zeros allowed inside)."""
    if len(lo) == 1:
        return lo if lo == hi else f"[{lo}-{hi}]"
    if lo[0] == hi[0]:
        return lo[0] + _digits_range(lo[1:], hi[1:])
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return f"[{lo[0]}-{hi[0]}][0-9]{{{rest}}}"
    parts = [lo[0] + _digits_range(lo[1:], "9" * rest)]
    if int(hi[0]) - int(lo[0]) > 1:
        first, last = int(lo[0]) + 1, int(hi[0]) - 1
        head = str(first) if first == last else f"[{first}-{last}]"
        parts.append(f"{head}[0-9]{{{rest}}}")
    parts.append(hi[0] + _digits_range("0" * rest, hi[1:]))
    return "(" + "|".join(parts) + ")"


def natural_range_regex(lo: int, hi: int | None) -> str | None:
    """Regex for naturals lo <= n <= hi (hi None: unbounded) without leading zeros; None if empty."""
    lo = max(lo, 0)
    if hi is not None and hi < lo:
        return None
    parts: list[str] = []
    if lo == 0:
        parts.append("0")
        lo = 1
        if hi is not None and hi < 1:
            return "0"
    top = hi if hi is not None else 10 ** len(str(lo)) - 1
    width = len(str(lo))
    while lo <= top:
        width_top = min(top, 10**width - 1)
        parts.append(_digits_range(str(lo), str(width_top)))
        lo, width = 10**width, width + 1
    if hi is None:
        parts.append(f"[1-9][0-9]{{{width - 1},}}")
    return "(" + "|".join(parts) + ")"


def integer_range_regex(lo: int | None, hi: int | None) -> str | None:
    """Regex for integers lo <= n <= hi in JSON form (no leading zeros, no -0); None if empty."""
    parts: list[str] = []
    if hi is None or hi >= 0:
        nonneg = natural_range_regex(max(lo, 0) if lo is not None else 0, hi)
        if nonneg:
            parts.append(nonneg)
    if lo is None or lo < 0:
        neg_hi = None if lo is None else -lo
        neg_lo = 1 if hi is None or hi >= 0 else -hi
        neg = natural_range_regex(max(neg_lo, 1), neg_hi)
        if neg:
            parts.append("-" + neg)
    return "(" + "|".join(parts) + ")" if parts else None


def number_range_regex(lo: float | None, hi: float | None, lo_excl: bool, hi_excl: bool) -> str | None:
    """Regex for a sound subset of JSON numbers x with lo <(=) x <(=) hi; None if the subset is empty."""
    int_lo = None if lo is None else (math.floor(lo) + 1 if lo_excl else math.ceil(lo))
    int_hi = None if hi is None else (math.ceil(hi) - 1 if hi_excl else math.floor(hi))
    parts = []
    exact = integer_range_regex(int_lo, int_hi)
    if exact:
        parts.append(exact)
    # I.ddd with I >= 0 lies in [I, I+1): needs I >= lo (I > lo if exclusive) and I + 1 <= hi.
    pos_lo = 0 if lo is None else max(0, math.floor(lo) + 1 if lo_excl else math.ceil(lo))
    pos_hi = None if hi is None else math.floor(hi) - 1
    pos = natural_range_regex(pos_lo, pos_hi)
    if pos:
        parts.append(pos + _FRACTION)
    # -I.ddd with I >= 0 lies in (-(I+1), -I]: needs -(I+1) >= lo and -I <= hi (-I < hi if exclusive).
    neg_lo = 0 if hi is None or hi > 0 or (hi == 0 and not hi_excl) else (
        math.floor(-hi) + 1 if hi_excl else math.ceil(-hi))
    neg_hi = None if lo is None else math.floor(-lo) - 1
    if neg_hi is None or neg_hi >= neg_lo:
        neg = natural_range_regex(neg_lo, neg_hi)
        if neg:
            parts.append("-" + neg + _FRACTION)
    return "(" + "|".join(parts) + ")" if parts else None


def _bounds(node: dict) -> tuple[float | None, float | None, bool, bool]:
    """(lo, hi, lo_exclusive, hi_exclusive) of a numeric subschema (draft 4 and draft 6+ forms)."""
    lo, hi = node.get("minimum"), node.get("maximum")
    lo_excl = hi_excl = False
    ex_lo, ex_hi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    if isinstance(ex_lo, bool):
        lo_excl = ex_lo
    elif ex_lo is not None and (lo is None or ex_lo >= lo):
        lo, lo_excl = ex_lo, True
    if isinstance(ex_hi, bool):
        hi_excl = ex_hi
    elif ex_hi is not None and (hi is None or ex_hi <= hi):
        hi, hi_excl = ex_hi, True
    for name, value in (("minimum", lo), ("maximum", hi)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConstraintError(f"json_schema {name} must be a number, got {value!r}")
    return lo, hi, lo_excl, hi_excl


def _range_for(node: dict) -> str:
    lo, hi, lo_excl, hi_excl = _bounds(node)
    if node["type"] == "integer":
        int_lo = None if lo is None else (math.floor(lo) + 1 if lo_excl else math.ceil(lo))
        int_hi = None if hi is None else (math.ceil(hi) - 1 if hi_excl else math.floor(hi))
        regex = integer_range_regex(int_lo, int_hi)
    else:
        regex = number_range_regex(lo, hi, lo_excl, hi_excl)
    if regex is None:
        raise ConstraintError(f"json_schema numeric bounds admit no value the compiler can produce: {node}")
    return regex


def _replace_bounded_numbers(node: Any, ranges: list[str]) -> Any:
    """Copy of node with each bounded integer/number subschema replaced by a placeholder const."""
    if isinstance(node, list):
        return [_replace_bounded_numbers(item, ranges) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("allOf"), list) and len(node["allOf"]) > 1:
        # outlines-core concatenates allOf branches (wrong JSON); refuse rather than mis-constrain.
        raise ConstraintError("json_schema allOf with more than one subschema is not supported")
    if node.get("type") in ("integer", "number") and any(k in node for k in _BOUND_KEYS) \
            and "enum" not in node and "const" not in node:
        ranges.append(_range_for(node))
        return {"const": _PLACEHOLDER.format(len(ranges) - 1)}
    return {key: _replace_bounded_numbers(value, ranges) for key, value in node.items()}


def schema_to_regex(schema_text: str, whitespace_pattern: str | None = None) -> str:
    """Regex for the JSON documents a schema admits; ConstraintError if the compiler rejects it."""
    from outlines_core.json_schema import build_regex_from_schema

    try:
        schema = json.loads(schema_text)
    except json.JSONDecodeError as e:
        raise ConstraintError(f"json_schema is not valid JSON: {e}") from None
    ranges: list[str] = []
    rewritten = _replace_bounded_numbers(schema, ranges)
    try:
        regex = build_regex_from_schema(json.dumps(rewritten), whitespace_pattern)
    except (ValueError, TypeError, RuntimeError) as e:
        raise ConstraintError(f"json_schema rejected by the compiler: {e}") from None
    for i, range_regex in enumerate(ranges):  # a placeholder may be absent (e.g. items of maxItems 0)
        regex = regex.replace('"' + _PLACEHOLDER.format(i) + '"', range_regex)
    return regex
