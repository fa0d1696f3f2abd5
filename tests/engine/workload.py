"""The engine equivalence workload: configurations, the 216-request mixed workload, a run helper."""
from __future__ import annotations

import numpy as np

from jaxsgl.engine.engine import Engine

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
