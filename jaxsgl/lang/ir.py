"""The program IR: expressions appended to a state with `s += ...`, and sampling parameters.

Text, `gen`, `select` and role markers are small expression objects; `a + b` of expressions
(or of an expression and a str) makes a flat `ExprList`. The interpreter walks them in order.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Optional, Union

# SGLang's regexes for gen(dtype=...), defined once in the host-only constrained layer.
from jaxsgl.constrained.spec import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, constraint_from_params  # noqa: F401

if TYPE_CHECKING:
    from jaxsgl.lang.choices import ChoicesSamplingMethod


# Fields that map one-to-one onto the engine's sampling_params dict (SGLang's names).
ENGINE_SAMPLING_KEYS = (
    "max_new_tokens", "min_new_tokens", "n", "stop", "stop_token_ids", "temperature", "top_p", "top_k",
    "min_p", "frequency_penalty", "presence_penalty", "ignore_eos",
)
# Fields that are request-level options rather than sampling params.
REQUEST_KEYS = ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs")
ALL_KEYS = ENGINE_SAMPLING_KEYS + ("stop_regex",) + REQUEST_KEYS + ("dtype", "regex", "json_schema")


@dataclasses.dataclass
class SamplingParams:
    """Sampling settings of one `gen`; None means "inherit from the run's defaults"."""

    max_new_tokens: Optional[int] = None
    min_new_tokens: Optional[int] = None
    n: Optional[int] = None
    stop: Optional[Union[str, list[str]]] = None
    stop_token_ids: Optional[list[int]] = None
    stop_regex: Optional[Union[str, list[str]]] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    frequency_penalty: Optional[float] = None
    presence_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = None
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    dtype: Optional[Union[type, str]] = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None

    def merged_over(self, defaults: "SamplingParams") -> "SamplingParams":
        """A copy of defaults with every non-None field of self written over it."""
        out = dataclasses.replace(defaults)
        for key in ALL_KEYS:
            value = getattr(self, key)
            if value is not None:
                setattr(out, key, value)
        return out

    def constraint_dict(self) -> dict[str, Any]:
        """The engine's constraint params for regex / json_schema / dtype (dtype becomes SGLang's regex),
        and stop_regex. Raises ValueError for a malformed or ambiguous constraint."""
        out: dict[str, Any] = {}
        spec = constraint_from_params(regex=self.regex, json_schema=self.json_schema, dtype=self.dtype)
        if spec is not None:
            out["json_schema" if spec.kind == "json_schema" else "regex"] = spec.source
        if self.stop_regex:
            out["stop_regex"] = [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex)
        return out

    def to_engine_dict(self) -> dict[str, Any]:
        """The engine's sampling_params dict: only the keys that are set, stop as a list."""
        out: dict[str, Any] = {}
        for key in ENGINE_SAMPLING_KEYS:
            value = getattr(self, key)
            if value is None:
                continue
            if key == "stop":
                value = [value] if isinstance(value, str) else list(value)
                if not value:
                    continue
            if key == "stop_token_ids":
                value = list(value)
                if not value:
                    continue
            out[key] = value
        return out


def run_defaults(max_new_tokens: int = 128, stop: Any = (), stop_token_ids: Any = (),
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = -1, min_p: float = 0.0,
                 frequency_penalty: float = 0.0, presence_penalty: float = 0.0, ignore_eos: bool = False,
                 return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
                 top_logprobs_num: Optional[int] = None,
                 return_text_in_logprobs: Optional[bool] = None) -> SamplingParams:
    """The defaults `func.run(...)` / `run_batch(...)` give every gen (SGLang's defaults)."""
    return SamplingParams(
        max_new_tokens=max_new_tokens, stop=list(stop) if not isinstance(stop, str) else stop,
        stop_token_ids=list(stop_token_ids or []), temperature=temperature, top_p=top_p, top_k=top_k,
        min_p=min_p, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        ignore_eos=ignore_eos, return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs)


class RoleMethods:
    """`s.system(...)`, `s.user(...)`, `s.assistant(...)` for any state with a `_role(name, expr)`."""

    def system(self, expr: Optional[Any] = None) -> Any:
        return self._role("system", expr)  # type: ignore[attr-defined]

    def user(self, expr: Optional[Any] = None) -> Any:
        return self._role("user", expr)  # type: ignore[attr-defined]

    def assistant(self, expr: Optional[Any] = None) -> Any:
        return self._role("assistant", expr)  # type: ignore[attr-defined]


class Expr:
    """Base of every expression; `+` concatenates into an ExprList."""

    def __add__(self, other: Any) -> "ExprList":
        return _concat(self, _as_expr(other))

    def __radd__(self, other: Any) -> "ExprList":
        return _concat(_as_expr(other), self)


def _as_expr(x: Any) -> Expr:
    if isinstance(x, Expr):
        return x
    if isinstance(x, str):
        return ConstantText(x)
    raise TypeError(f"cannot append {type(x).__name__} to a program (expected str or an sgl expression)")


def _concat(a: Expr, b: Expr) -> "ExprList":
    left = a.exprs if isinstance(a, ExprList) else [a]
    right = b.exprs if isinstance(b, ExprList) else [b]
    return ExprList(left + right)


class ExprList(Expr):
    def __init__(self, exprs: list[Expr]):
        self.exprs = exprs

    def __repr__(self) -> str:
        return f"ExprList({self.exprs})"


class ConstantText(Expr):
    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return f"Constant({self.value!r})"


class Gen(Expr):
    def __init__(self, name: Optional[str], sampling_params: SamplingParams):
        self.name = name
        self.sampling_params = sampling_params

    def __repr__(self) -> str:
        return f"Gen({self.name!r})"


class Select(Expr):
    def __init__(self, name: Optional[str], choices: list[str], temperature: float,
                 choices_method: "ChoicesSamplingMethod"):
        self.name = name
        self.choices = list(choices)
        self.temperature = temperature
        self.choices_method = choices_method

    def __repr__(self) -> str:
        return f"Select({self.name!r}, choices={self.choices})"


class RoleBegin(Expr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleBegin({self.role})"


class RoleEnd(Expr):
    def __init__(self, role: str):
        self.role = role

    def __repr__(self) -> str:
        return f"RoleEnd({self.role})"


class VarScopeBegin(Expr):
    def __init__(self, name: str):
        self.name = name


class VarScopeEnd(Expr):
    def __init__(self, name: str):
        self.name = name


class CommitLazy(Expr):
    """Prefill and cache the text so far (the fork hint)."""


class ConcatAndAppend(Expr):
    """Append the text each forked state produced since the fork (join mode concate_and_append)."""

    def __init__(self, states: list[Any]):
        self.states = states


class Argument(Expr):
    """A placeholder for a program argument while tracing: using its value stops the trace."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"Argument({self.name})"

    def __format__(self, spec: str) -> str:
        raise TypeError("a traced argument cannot be formatted into an f-string")

    def __str__(self) -> str:
        raise TypeError("a traced argument has no value")

    def __len__(self) -> int:
        raise TypeError("a traced argument has no value")

    def __iter__(self):
        raise TypeError("a traced argument has no value")

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("a traced argument has no value")

    def __bool__(self) -> bool:
        raise TypeError("a traced argument has no value")


class Image(Expr):
    """`sgl.image(path_or_bytes)`: an image part of the current chat message."""

    def __init__(self, source: Any):
        self.source = source

    def __repr__(self) -> str:
        return f"Image({self.source if isinstance(self.source, str) else type(self.source).__name__})"


class Video(Expr):
    """`sgl.video(path, num_frames)`: a video part of the current chat message."""

    def __init__(self, source: Any, num_frames: int):
        self.source = source
        self.num_frames = num_frames

    def __repr__(self) -> str:
        return f"Video({self.source!r}, {self.num_frames})"


class SeparateReasoning(Expr):
    """After `expr` runs, split each of its named gens/selects into answer and `<name>_reasoning_content`."""

    def __init__(self, model_type: Optional[str], expr: Any):
        self.model_type = model_type
        self.expr = expr
        self.names = _output_names(expr)

    def __repr__(self) -> str:
        return f"SeparateReasoning({self.model_type!r}, {self.names})"


def _output_names(expr: Any) -> list[Any]:
    if isinstance(expr, (Gen, Select)):
        return [expr.name]
    if isinstance(expr, ExprList):
        return [n for e in expr.exprs for n in _output_names(e)]
    return []
