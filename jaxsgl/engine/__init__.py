"""jaxsgl.engine."""
