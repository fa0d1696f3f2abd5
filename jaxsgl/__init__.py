"""jaxsgl: structured language-model programs on a pure-JAX runtime.

`import jaxsgl` stays light (no JAX import); `jaxsgl.Engine` loads the engine on first use.
"""
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "Engine":
        from jaxsgl.engine.engine import Engine

        return Engine
    raise AttributeError(f"module 'jaxsgl' has no attribute {name!r}")
