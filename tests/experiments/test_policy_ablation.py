"""experiments/policy_ablation.py: the simulation is checked against hit rates computed by hand."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments import policy_ablation as pa
from experiments.workloads import REPO_ROOT, Request, Workload

DATA = Path(os.environ.get("JAXSGL_DATA") or REPO_ROOT.parent / "shared" / "data")


@pytest.mark.parametrize("schedule", pa.SCHEDULE_POLICIES)
def test_unlimited_pool_reaches_the_trie_optimum(schedule: str) -> None:
    wl = pa.synthetic_workload(num_groups=6, per_group=5, prefix_len=200, question_len=40, seed=1)
    prompts = [r.prompt_ids for r in wl.requests]
    optimum = wl.prompt_tokens - pa.unique_prompt_tokens(prompts)
    assert pa.optimal_cached_tokens(prompts, 1) == optimum  # no prompt is a prefix of another
    res = pa.simulate(wl, schedule=schedule, page_size=1, check=True)
    assert res.row["cached_tokens"] == optimum
    assert res.row["hit_rate"] == pytest.approx(optimum / wl.prompt_tokens)
    assert res.row["evicted_pages"] == 0 and res.row["retractions"] == 0
    assert res.row["prefill_tokens"] == wl.prompt_tokens - optimum  # nothing recomputed
    assert len(res.trace) == res.row["steps"] and len(res.waits) == len(wl.requests)


def test_lpm_beats_fcfs_with_a_small_pool() -> None:
    wl = pa.synthetic_workload(num_groups=12, per_group=6, prefix_len=512, question_len=32, seed=2)
    pool = pa.pool_tokens_for(wl, 0.15, 16)
    hit = {sp: pa.simulate(wl, schedule=sp, pool_tokens=pool, check=True).row for sp in ("fcfs", "lpm")}
    assert hit["fcfs"]["evicted_pages"] > 0
    assert hit["lpm"]["hit_rate"] >= hit["fcfs"]["hit_rate"] + 0.1
    assert hit["lpm"]["prefill_tokens"] < hit["fcfs"]["prefill_tokens"]
    assert hit["lpm"]["hit_rate"] <= wl.optimal_hit_rate(16) + 1e-9


def test_chained_calls_arrive_after_their_predecessor_and_reuse_it() -> None:
    base = list(range(1000, 1100))
    reqs = [Request("a", base, 5), Request("b", base + list(range(2000, 2030)), 5, after="a"),
            Request("c", base + list(range(2000, 2030)) + list(range(3000, 3010)), 5, after="b"),
            Request("x", list(range(4000, 4050)), 3)]
    wl = Workload("chain", reqs)
    res = pa.simulate(wl, page_size=4, check=True)
    prompts = [r.prompt_ids for r in reqs]
    assert res.row["cached_tokens"] == pa.optimal_cached_tokens(prompts, 4) == 100 + 128
    assert res.row["steps"] >= 3 * 5  # a, b, c run one after another, 5 outputs each


def test_pool_size_is_raised_to_fit_the_largest_request() -> None:
    wl = pa.synthetic_workload(num_groups=2, per_group=2, prefix_len=300, question_len=20, output_len=30)
    assert pa.pool_tokens_for(wl, 0.01, 16) >= wl.max_request_tokens + 16
    assert pa.pool_tokens_for(wl, 2.0, 16) >= 2 * wl.unique_tokens()


def test_data_dir_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("JAXSGL_DATA", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="JAXSGL_DATA"):
        pa.data_dir()
    assert pa.data_dir(tmp_path) == tmp_path


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")
def test_real_workloads_share_prefixes() -> None:
    chars = lambda s: [ord(c) for c in s]  # char-level ids: no tokenizer load in this test
    mmlu = pa.mmlu_workload(chars, DATA, num_subjects=2, per_subject=3)
    by_subject: dict[str, list[list[int]]] = {}
    for r in mmlu.requests:
        by_subject.setdefault(r.group, []).append(r.prompt_ids)
    assert len(by_subject) == 2 and all(len(v) == 3 for v in by_subject.values())
    for a, b, *_ in by_subject.values():  # the 5-shot dev prefix is shared
        assert pa.optimal_cached_tokens([a, b]) > 1000
    react = pa.react_workload(chars, DATA, num_questions=2)
    for r in react.requests:
        if r.after is not None:
            prev = next(p for p in react.requests if p.rid == r.after)
            assert r.prompt_ids[:len(prev.prompt_ids) - 1] == prev.prompt_ids[:-1]
    agents = pa.agents_workload(chars, DATA, num_calls=30)
    assert len(agents.requests) == 30 and agents.optimal_hit_rate() > 0.5
    res = pa.simulate(agents, schedule="lpm", pool_frac=0.3, check=True)
    assert 0 < res.row["hit_rate"] <= agents.optimal_hit_rate(16) + 1e-9
