"""JAX's persistent compilation cache, kept beside the converted checkpoints.

With it a second start reuses the compiled step functions instead of recompiling
every layer (seconds on a CPU, more on a GPU).
"""
from __future__ import annotations

import jax

from jaxsgl.model.gguf_convert import cache_root


def enable_compilation_cache() -> None:
    """Point jax_compilation_cache_dir at $JAXSGL_CACHE/xla (unless the user set one)."""
    if jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", str(cache_root() / "xla"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
