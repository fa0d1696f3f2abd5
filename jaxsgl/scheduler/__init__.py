"""jaxsgl.scheduler."""
