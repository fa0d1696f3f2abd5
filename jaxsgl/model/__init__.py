"""Functional Llama-family model: config, weights pytree, forward over paged KV, loaders.

Importing this package does not import JAX; `jaxsgl.model.forward` and the loaders do.
"""
