"""jaxsgl.cache."""
