"""The tiny engine model fixture (tests/engine/conftest.py) for the engine-records test."""
from tests.engine.conftest import tiny_model_dir  # noqa: F401
