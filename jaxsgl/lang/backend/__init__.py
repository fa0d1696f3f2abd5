"""Backends behind one interface (BaseBackend): the local engine now, HTTP / OpenAI later."""
from jaxsgl.lang.backend.base import BaseBackend, ConstrainedDecodingUnavailable
from jaxsgl.lang.backend.runtime import Runtime, RuntimeBackend, as_backend

__all__ = ["BaseBackend", "ConstrainedDecodingUnavailable", "Runtime", "RuntimeBackend", "as_backend"]
