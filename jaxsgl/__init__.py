"""jaxsgl: structured language-model programs on a pure-JAX runtime.

`import jaxsgl` stays light (no JAX import); `jaxsgl.Engine` loads the engine on first use, and the
HTTP backends `jaxsgl.RuntimeEndpoint` / `jaxsgl.OpenAI` load their client libraries on first use.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Engine":
        from jaxsgl.engine.engine import Engine

        return Engine
    if name in ("RuntimeEndpoint", "OpenAI"):
        from jaxsgl.lang import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'jaxsgl' has no attribute {name!r}")


# The frontend language (plain Python, no JAX): `import jaxsgl as sgl` runs SGLang programs.
from jaxsgl.lang import (BackendError, Runtime, RuntimeBackend, assistant, assistant_begin,  # noqa: E402
                         assistant_end, flush_cache, function, gen, gen_int, gen_string, get_server_info,
                         global_config, greedy_token_selection, image, select, separate_reasoning,
                         set_default_backend, system, system_begin, system_end, token_length_normalized,
                         unconditional_likelihood_normalized, user, user_begin, user_end, video)
