"""The GPU scripts under benchmarks/device cannot run in CI; check what can rot without a GPU: each parses
(bash -n), every long flag it passes exists in the Python script it runs (or is a launch_server flag, for
--engine-args), and the device README lists it."""
import re
import subprocess
from pathlib import Path

import pytest

from jaxsgl.server.launch import build_parser

ROOT = Path(__file__).resolve().parents[2]
DEVICE = ROOT / "benchmarks" / "device"
SCRIPTS = sorted(p for p in DEVICE.glob("*.sh") if p.name != "_env.sh")


def _flags_and_sources(script: Path) -> tuple[set[str], str]:
    body = re.sub(r"<<'?(\w+)'?\n.*?\n\1\n", "", script.read_text(), flags=re.S)  # heredocs: inline Python
    targets = re.findall(r"python3 (benchmarks/\w+\.py)", body)
    targets += [f"experiments/{m}.py" for m in re.findall(r"python3 -m experiments\.(\w+)", body)]
    sources = "".join((ROOT / t).read_text() for t in targets)
    sources += (ROOT / "benchmarks" / "_common.py").read_text()
    flags = set(re.findall(r"(?<![\w=-])(--[a-z][a-z0-9-]*)(?!\w)", body))  # not XLA's --xla_* flags
    return flags, sources


def test_there_are_device_scripts():
    assert len(SCRIPTS) >= 10


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_device_script_parses_and_passes_known_flags(script: Path):
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    flags, sources = _flags_and_sources(script)
    server_flags = {s for a in build_parser()._actions for s in a.option_strings}
    unknown = sorted(f for f in flags if f'"{f}"' not in sources and f not in server_flags)
    assert not unknown, f"{script.name} passes flags no script it runs defines: {unknown}"


def test_device_readme_lists_every_script():
    readme = (DEVICE / "README.md").read_text()
    missing = [p.name for p in SCRIPTS if f"`{p.name}" not in readme]
    assert not missing, f"benchmarks/device/README.md does not list {missing}"


def test_the_xla_flag_variants_are_flags_this_xla_knows():
    """xla_flags.sh's and batch_invariance.sh's variants: an unknown XLA flag aborts the process at backend
    start (on the CPU too)."""
    import os
    import sys
    variants = [v for name in ("xla_flags.sh", "batch_invariance.sh")
                for v in re.findall(r'\[(\w+)\]="([^"]*)"', (DEVICE / name).read_text())]
    flags = " ".join(f for _, f in variants)
    assert flags.count("--xla_gpu_") >= 7
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
