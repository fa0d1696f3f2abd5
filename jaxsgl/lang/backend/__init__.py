"""Backends behind one interface (BaseBackend): the in-process engine, SGLang's HTTP API, OpenAI's API.

RuntimeEndpoint (httpx) and OpenAI (the openai package) load on first use.
"""
from typing import Any

from jaxsgl.lang.backend.base import BackendError, BaseBackend, PromptContext, TokenUsage
from jaxsgl.lang.backend.runtime import Runtime, RuntimeBackend, as_backend

__all__ = ["BackendError", "BaseBackend", "OpenAI", "PromptContext", "Runtime", "RuntimeBackend", "RuntimeEndpoint",
           "TokenUsage", "as_backend"]


def __getattr__(name: str) -> Any:
    if name == "RuntimeEndpoint":
        from jaxsgl.lang.backend.http import RuntimeEndpoint

        return RuntimeEndpoint
    if name == "OpenAI":
        from jaxsgl.lang.backend.openai_backend import OpenAI

        return OpenAI
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
