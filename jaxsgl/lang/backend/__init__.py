"""Backends behind one interface (BaseBackend): the local engine now, HTTP / OpenAI later."""
from jaxsgl.lang.backend.base import BaseBackend
from jaxsgl.lang.backend.runtime import Runtime, RuntimeBackend, as_backend

__all__ = ["BaseBackend", "Runtime", "RuntimeBackend", "as_backend"]
