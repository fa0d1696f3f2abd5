"""Greedy outputs are token-identical whatever the cache, page size, chunking or memory pressure."""
from __future__ import annotations

import pytest

from jaxsgl.engine.reference_generate import generate_ids
from jaxsgl.model.loader import load_model
from tests.engine.workload import CONFIGS, run


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "cache-on-page16-chunked"])
def test_greedy_outputs_identical_across_configs(name, tiny_model_dir, workload, baseline):
    outs, stats = run(tiny_model_dir, workload, **CONFIGS[name])
    assert outs == baseline[0]
    if name == "cache-off":
        assert stats["cached_prompt_tokens"] == 0
    if name == "heavy-eviction":
        assert stats["evicted_pages"] > 0


def test_cache_hits_on_shared_prefixes_and_matches_unbatched_reference(tiny_model_dir, workload, baseline):
    outs, stats = baseline
    assert stats["hit_rate"] > 0.3  # shared system prompts and repeats are served from the cache
    cfg, weights, _ = load_model(tiny_model_dir, dtype="float32")
    for i in range(0, len(workload), 27):  # a sample, against one-sequence-at-a-time generation
        ids, n = workload[i]
        assert outs[i] == generate_ids(cfg, weights, ids, n, ignore_eos=True)
