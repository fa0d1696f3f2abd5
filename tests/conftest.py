"""Shared fixtures: tiny random HF checkpoints and the embedded default model."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/hf_checkpoints.py

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def hf_checkpoint(tmp_path_factory):
    """hf_checkpoint(name) -> directory of a tiny random fp32 checkpoint (made once per session)."""
    from hf_checkpoints import make_hf_checkpoint

    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = make_hf_checkpoint(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get


@pytest.fixture(scope="session")
def default_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct, converted from its GGUF (cached across runs)."""
    from jaxsgl.model.resolve import resolve_model_dir

    return resolve_model_dir(None)


@pytest.fixture(scope="session")
def default_model(default_model_dir):
    """(cfg, fp32 weights, dir) of the default model."""
    from jaxsgl.model.loader import load_model

    return load_model(default_model_dir, dtype="float32")
