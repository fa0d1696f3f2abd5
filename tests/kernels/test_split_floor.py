"""The decode class's flash-decoding split floor and cap (block_configs.MIN_SPLIT_TOKENS and MAX_SPLITS,
from $JAXSGL_MIN_SPLIT_TOKENS and $JAXSGL_MAX_SPLITS): how they set the splits, and a bad value refused at
import."""
from __future__ import annotations

import importlib

import jax.numpy as jnp

configs = importlib.import_module("jaxsgl.kernels.block_configs")


def _splits(num_seqs: int, pages_per_seq: int) -> int:
    return configs.default_configs(max(num_seqs, 16), num_seqs, pages_per_seq, 16, 32, 8, 128, jnp.bfloat16)[0].num_splits


def test_the_floor_bounds_the_splits_of_a_small_grid(monkeypatch) -> None:
    monkeypatch.setattr(configs, "MIN_SPLIT_TOKENS", 512)
    assert (_splits(1, 33), _splits(1, 129), _splits(64, 129)) == (1, 4, 1)  # 528 / 2,064 tokens of width
    monkeypatch.setattr(configs, "MIN_SPLIT_TOKENS", 128)
    assert (_splits(1, 33), _splits(1, 129), _splits(64, 129)) == (4, 16, 1)  # 64 x 8 programs: no split


def test_a_bad_floor_is_refused_by_name(import_error) -> None:
    assert "JAXSGL_MIN_SPLIT_TOKENS='0'" in import_error("JAXSGL_MIN_SPLIT_TOKENS", "0")


def test_the_cap_bounds_the_splits_of_one_long_sequence(monkeypatch) -> None:
    monkeypatch.setattr(configs, "MIN_SPLIT_TOKENS", 128)
    assert _splits(1, 513) == 16  # 8k tokens of width, 8 programs: the default cap
    monkeypatch.setattr(configs, "MAX_SPLITS", 64)
    assert (_splits(1, 513), _splits(1, 33), _splits(8, 513)) == (33, 4, 5)  # 264 programs fill the GPU twice


def test_a_bad_cap_is_refused_by_name(import_error) -> None:
    assert "JAXSGL_MAX_SPLITS='x'" in import_error("JAXSGL_MAX_SPLITS", "x")
