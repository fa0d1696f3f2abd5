"""Fixtures of the kernel tests: a tiny Llama config for the model-level checks, and a probe for
settings that must be refused when the kernels are imported."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jaxsgl.model.config import ModelConfig, RopeScaling


@pytest.fixture
def tiny_llama() -> ModelConfig:
    """Two layers, GQA 4:2, head_dim 32, pages of 16 fit its 512 positions."""
    return ModelConfig(arch="llama", vocab_size=97, hidden_size=64, intermediate_size=128, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=32, rms_norm_eps=1e-5, rope_theta=10000.0,
                       rope_scaling=RopeScaling(), max_position_embeddings=512, tie_word_embeddings=True)


@pytest.fixture
def import_error():
    """import_error(NAME, VALUE) -> stderr of `import jaxsgl.kernels` with that setting, which must fail."""
    def run(name: str, value: str) -> str:
        env = {**os.environ, name: value, "JAX_PLATFORMS": "cpu"}
        res = subprocess.run([sys.executable, "-c", "import jaxsgl.kernels"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode != 0, f"{name}={value!r} was accepted"
        return res.stderr
    return run


@pytest.fixture
def spy(monkeypatch):
    """spy(module, name) -> list that gets an entry each time module.name (a kernel) is traced."""
    def wrap(module, name: str) -> list:
        calls, kernel = [], getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or kernel(*a, **k))
        return calls
    return wrap


@pytest.fixture
def two_prompts(tiny_llama):
    """Two random prompts of 21 and 9 tokens in tiny_llama's vocabulary (on pages [5, 2] and [9] of 16)."""
    import numpy as np

    rng = np.random.default_rng(0)
    return rng.integers(0, tiny_llama.vocab_size, 21).tolist(), rng.integers(0, tiny_llama.vocab_size, 9).tolist()
