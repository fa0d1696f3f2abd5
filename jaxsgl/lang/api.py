"""The public frontend API, named as in SGLang: `import jaxsgl as sgl`."""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Optional, Union

from jaxsgl.lang.backend.runtime import Runtime, as_backend
from jaxsgl.lang.choices import ChoicesSamplingMethod, token_length_normalized
from jaxsgl.lang.function import SglFunction
from jaxsgl.lang.global_config import global_config
from jaxsgl.lang.ir import (Expr, ExprList, Gen, Image, RoleBegin, RoleEnd, SamplingParams, Select, SeparateReasoning,
                            Video, _as_expr)


def function(func: Optional[Callable[..., Any]] = None, num_api_spec_tokens: Optional[int] = None) -> Any:
    """Decorator: `@sgl.function def prog(s, ...)` (with or without parentheses)."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)
    return lambda f: SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)


def set_default_backend(backend: Any) -> None:
    """The backend programs use when run() gets none: a Runtime, an Engine or a BaseBackend."""
    global_config.default_backend = as_backend(backend)


def get_default_backend() -> Any:
    return global_config.default_backend


def flush_cache(backend: Any = None) -> bool:
    be = backend or global_config.default_backend
    return as_backend(be).flush_cache() if be is not None else False


def get_server_info(backend: Any = None) -> Optional[dict[str, Any]]:
    be = backend or global_config.default_backend
    return as_backend(be).get_server_info() if be is not None else None


def gen(name: Optional[str] = None, max_tokens: Optional[int] = None, min_tokens: Optional[int] = None,
        n: Optional[int] = None, stop: Optional[Union[str, list[str]]] = None,
        stop_token_ids: Optional[list[int]] = None, stop_regex: Optional[Union[str, list[str]]] = None,
        temperature: Optional[float] = None, top_p: Optional[float] = None, top_k: Optional[int] = None,
        min_p: Optional[float] = None, frequency_penalty: Optional[float] = None,
        presence_penalty: Optional[float] = None, ignore_eos: Optional[bool] = None,
        return_logprob: Optional[bool] = None, logprob_start_len: Optional[int] = None,
        top_logprobs_num: Optional[int] = None, return_text_in_logprobs: Optional[bool] = None,
        dtype: Optional[Union[type, str]] = None, choices: Optional[list[str]] = None,
        choices_method: Optional[ChoicesSamplingMethod] = None, regex: Optional[str] = None,
        json_schema: Optional[str] = None) -> Expr:
    """Generate into variable `name`; with choices=, the same as select(). Unset args inherit run()'s."""
    if choices:
        return Select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    if regex is not None:
        re.compile(regex)  # a bad pattern fails here, at the call site
    if isinstance(json_schema, dict):
        json_schema = json.dumps(json_schema)
    return Gen(name, SamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop, stop_token_ids=stop_token_ids,
        stop_regex=stop_regex, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
        frequency_penalty=frequency_penalty, presence_penalty=presence_penalty, ignore_eos=ignore_eos,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len, top_logprobs_num=top_logprobs_num,
        return_text_in_logprobs=return_text_in_logprobs, dtype=dtype, regex=regex, json_schema=json_schema))


def gen_int(name: Optional[str] = None, **kwargs: Any) -> Expr:
    """gen(dtype=int): an integer (SGLang's REGEX_INT, constrained decoding)."""
    return gen(name, dtype=int, **kwargs)


def gen_string(name: Optional[str] = None, **kwargs: Any) -> Expr:
    """gen(dtype=str): a quoted string (SGLang's REGEX_STR, constrained decoding)."""
    return gen(name, dtype=str, **kwargs)


def select(name: Optional[str] = None, choices: Optional[list[str]] = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> Select:
    """Append the most likely of choices (scored by choices_method) and store it in `name`."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    return Select(name, choices, temperature, choices_method)


def image(source: Any) -> Image:
    """An image part of the current message: a path, bytes, a PIL image or a URL (vision models only)."""
    return Image(source)


def video(path: Any, num_frames: int) -> Video:
    """A video part of the current message, num_frames frames to sample (vision models only)."""
    return Video(path, num_frames)


def separate_reasoning(expr: Optional[Any] = None, model_type: Optional[str] = None) -> ExprList:
    """Run expr, then split each of its named gens into the answer (the variable, and the text) and
    `<name>_reasoning_content` (the think block), by model_type's reasoning parser (think tags;
    None: guessed from the backend's model name)."""
    return ExprList([_as_expr(expr), SeparateReasoning(model_type, expr)])


def _role(role: str, expr: Optional[Any] = None) -> ExprList:
    if expr is None:
        return ExprList([RoleBegin(role), RoleEnd(role)])
    return ExprList([RoleBegin(role), _as_expr(expr), RoleEnd(role)])


def system(expr: Optional[Any] = None) -> ExprList:
    return _role("system", expr)


def user(expr: Optional[Any] = None) -> ExprList:
    return _role("user", expr)


def assistant(expr: Optional[Any] = None) -> ExprList:
    return _role("assistant", expr)


def system_begin() -> RoleBegin:
    return RoleBegin("system")


def system_end() -> RoleEnd:
    return RoleEnd("system")


def user_begin() -> RoleBegin:
    return RoleBegin("user")


def user_end() -> RoleEnd:
    return RoleEnd("user")


def assistant_begin() -> RoleBegin:
    return RoleBegin("assistant")


def assistant_end() -> RoleEnd:
    return RoleEnd("assistant")


__all__ = [
    "Runtime", "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
    "gen_string", "get_default_backend", "get_server_info", "image", "select", "separate_reasoning",
    "set_default_backend", "system",
    "system_begin", "system_end", "user", "user_begin", "user_end", "video",
]
