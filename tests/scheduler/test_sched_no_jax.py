"""cache/ and scheduler/ are host-only: importing them must not import JAX."""
import subprocess
import sys


def test_cache_and_scheduler_do_not_import_jax():
    code = ("import sys, jaxsgl.cache, jaxsgl.scheduler, jaxsgl.scheduler.mock_model; "
            "bad = sorted(m for m in sys.modules if m == 'jax' or m.startswith(('jax.', 'jaxlib'))); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
