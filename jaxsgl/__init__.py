"""jaxsgl: structured language-model programs on a pure-JAX runtime."""
__version__ = "0.1.0"
