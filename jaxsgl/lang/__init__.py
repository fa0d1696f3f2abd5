"""jaxsgl.lang."""
