"""Greedy outputs are token-identical whatever the cache, page size, chunking or memory pressure."""
from __future__ import annotations

import numpy as np
import pytest

from jaxsgl.engine.engine import Engine
from jaxsgl.engine.reference_generate import generate_ids
from jaxsgl.model.loader import load_model

CONFIGS = {
    "cache-on-page16-chunked": dict(page_size=16, chunked_prefill_size=64),
    "cache-off": dict(page_size=16, chunked_prefill_size=64, disable_radix_cache=True),
    "page1": dict(page_size=1, chunked_prefill_size=64),
    "no-chunking": dict(page_size=16, chunked_prefill_size=0),
    "heavy-eviction": dict(page_size=16, chunked_prefill_size=64, max_total_tokens=1024, max_running_requests=8),
}


def mixed_workload(n: int = 216, seed: int = 0) -> list[tuple[list[int], int]]:
    """(prompt ids, max_new_tokens): 6 system prompts x branches, repeats, and unrelated prompts, shuffled."""
    rng = np.random.default_rng(seed)
    tok = lambda k: rng.integers(3, 49152, k).tolist()
    systems = [tok(int(rng.integers(40, 120))) for _ in range(6)]
    work = []
    while len(work) < n:
        kind = rng.random()
        if kind < 0.6:  # branch off a shared system prompt (sometimes two levels deep)
            base = systems[int(rng.integers(len(systems)))]
            mid = tok(int(rng.integers(0, 20))) if rng.random() < 0.5 else []
            work.append((base + mid + tok(int(rng.integers(1, 30))), int(rng.integers(1, 9))))
        elif kind < 0.8 and work:  # exact repeat of an earlier request
            work.append(work[int(rng.integers(len(work)))])
        else:
            work.append((tok(int(rng.integers(1, 150))), int(rng.integers(1, 9))))
    rng.shuffle(work)
    return work


def run(model_dir, work, **opts) -> tuple[list[list[int]], dict]:
    with Engine(str(model_dir), dtype="float32", debug_check_integrity=True, max_wait_steps=50, **opts) as eng:
        outs = eng.generate(input_ids=[w[0] for w in work],
                            sampling_params=[{"max_new_tokens": w[1], "temperature": 0, "ignore_eos": True}
                                             for w in work])
        stats = eng.cache_stats()
        assert not eng.scheduler.has_work() and eng.scheduler.cache.locked_pages == 0
        eng.scheduler.check_integrity()
    return [o["output_ids"] for o in outs], stats


@pytest.fixture(scope="module")
def workload():
    return mixed_workload()


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, workload):
    return run(tiny_model_dir, workload, **CONFIGS["cache-on-page16-chunked"])


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
