"""Load weights from HF checkpoint directories (safetensors, sharded or not) or make dummy ones.

Tensors are read one at a time from memory-mapped safetensors files, converted and
placed on the device, so host memory holds at most one tensor's copy beyond the
page cache: an 8B checkpoint never sits twice in RAM.
GGUF files are first converted to an HF directory (jaxsgl.model.gguf_convert) and
then loaded through this same path.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open

from jaxsgl.model.config import ModelConfig
from jaxsgl.model.weights import ParamSpec, Weights, is_spec, map_specs, random_weights, weight_specs
from jaxsgl.progress import progress

log = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "safetensors", "dummy")
DTYPES = {"bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16, "float32": jnp.float32, "fp32": jnp.float32,
          "float16": jnp.float16, "fp16": jnp.float16}


def resolve_dtype(dtype: str | Any, cfg: ModelConfig | None = None) -> Any:
    """A jnp dtype from a name; "auto" is the checkpoint's own dtype (cfg.checkpoint_dtype)."""
    if dtype == "auto":
        dtype = cfg.checkpoint_dtype if cfg is not None else "bfloat16"
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
        return DTYPES[dtype]
    return dtype


class SafetensorsIndex:
    """Which file of a checkpoint directory holds each tensor name."""

    def __init__(self, model_dir: str | Path):
        self.dir = Path(model_dir)
        index = self.dir / "model.safetensors.index.json"
        if index.exists():
            with open(index) as f:
                self.file_of = {k: self.dir / v for k, v in json.load(f)["weight_map"].items()}
        else:
            files = sorted(self.dir.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"no *.safetensors files in {self.dir}")
            self.file_of = {}
            for path in files:
                with safe_open(path, "numpy") as f:
                    self.file_of.update({k: path for k in f.keys()})
        self._open: dict[Path, Any] = {}

    def get(self, name: str) -> np.ndarray:
        if name not in self.file_of:
            raise KeyError(f"tensor {name!r} not found in checkpoint {self.dir}")
        path = self.file_of[name]
        if path not in self._open:
            self._open[path] = safe_open(path, "numpy")
        return self._open[path].get_tensor(name)

    def close(self) -> None:
        self._open.clear()


def _load_one(index: SafetensorsIndex, spec: ParamSpec) -> jax.Array:
    parts = [index.get(name) for name in spec.hf_names]
    if spec.transpose and all(t.ndim == 2 for t in parts):
        # concatenate([t.T ...], -1) == concatenate([t ...], 0).T, without numpy's slow strided copy: the
        # transposed view goes to device_put, which lays it out (fast) as it copies it to the device.
        arr = (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)).T
    else:
        parts = [t.T if spec.transpose else t for t in parts]
        arr = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    if arr.shape != spec.shape:
        raise ValueError(f"{spec.hf_names}: checkpoint shape {arr.shape} != expected {spec.shape}")
    # device_put, not jnp.asarray: the latter compiles a small jit per weight shape (~0.1 s each on a CPU).
    out = jax.device_put(arr.astype(spec.dtype, copy=False))
    del arr, parts
    return out


def load_weights(model_dir: str | Path, cfg: ModelConfig, dtype: str | Any = "auto",
                 load_format: str = "auto", seed: int = 0) -> Weights:
    """Weights for cfg from model_dir ("auto"/"safetensors") or random ("dummy")."""
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"unknown load_format {load_format!r}; choose one of {LOAD_FORMATS}")
    specs = weight_specs(cfg, resolve_dtype(dtype, cfg))
    if load_format == "dummy":
        return random_weights(specs, seed=seed)
    index = SafetensorsIndex(model_dir)
    if cfg.tie_word_embeddings is False and "lm_head.weight" not in index.file_of:
        raise ValueError(f"{model_dir}: config says untied embeddings but there is no lm_head.weight")
    leaves = jax.tree_util.tree_leaves(specs, is_leaf=is_spec)
    nbytes = sum(int(np.prod(s.shape)) * np.dtype(s.dtype).itemsize for s in leaves)
    with progress(desc=f"loading weights ({Path(model_dir).name})", total=nbytes, unit="B", unit_scale=True) as bar:
        def load(spec: ParamSpec) -> jax.Array:
            arr = _load_one(index, spec)
            bar.update(arr.nbytes)
            return arr

        try:
            return map_specs(load, specs)
        finally:
            index.close()


def load_model(model_path: str | Path | None = None, *, dtype: str | Any = "auto",
               load_format: str = "auto", seed: int = 0) -> tuple[ModelConfig, Weights, Path]:
    """(config, weights, checkpoint dir) for a path, a .gguf file, or None (the embedded default)."""
    from jaxsgl.model.resolve import resolve_model_dir

    model_dir = resolve_model_dir(model_path)
    cfg = ModelConfig.from_dir(model_dir)
    t0 = time.perf_counter()
    weights = jax.block_until_ready(load_weights(model_dir, cfg, dtype, load_format, seed))
    log.info("weights (%s): %.2f GB in %.1fs", load_format,
             sum(x.nbytes for x in jax.tree_util.tree_leaves(weights)) / 1e9, time.perf_counter() - t0)
    return cfg, weights, model_dir
