"""Server fixtures: a tiny random Llama with SmolLM2's tokenizer, served in-process on 127.0.0.1."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # harness.py


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, default_model_dir) -> Path:
    from harness import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("server_tiny"), Path(default_model_dir))


@pytest.fixture(scope="session")
def served(tiny_model):
    """An InProcessServer over the tiny model (debug integrity checks on every step), shared by the modules:
    tests leave it idle with every page back (assert_no_leaked_pages)."""
    from harness import ENGINE_OPTS, InProcessServer

    from jaxsgl.engine.engine import Engine

    srv = InProcessServer(Engine(str(tiny_model), **ENGINE_OPTS), model_path=str(tiny_model),
                          served_model_name="tiny").start()
    yield srv
    srv.stop()
