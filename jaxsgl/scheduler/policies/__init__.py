"""Plug-in scheduling policies, one file each (registered by name when jaxsgl.scheduler.policy is imported)."""
