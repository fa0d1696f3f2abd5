"""experiments/ablation.py: each ablation changes what it should, in the simulator."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from experiments import ablation as ab
from experiments.workloads import REPO_ROOT, Request, Workload, mmlu_workload, synthetic_workload
from jaxsgl.sim import ConstantCost
from experiments.sim_common import load_cost

DATA = Path(os.environ.get("JAXSGL_DATA") or REPO_ROOT.parent / "shared" / "data")


def test_flat_table_reuses_whole_entries_only() -> None:
    # siblings share a 256-token prefix that is never a whole prompt: the table reuses nothing
    wl = synthetic_workload(num_groups=3, per_group=4, prefix_len=256, question_len=32, seed=0)
    cost = ConstantCost(0.01)
    tree = ab.run_one(wl, cost, ab.ABLATIONS["full system"], page_size=16)
    flat = ab.run_one(wl, cost, ab.ABLATIONS["no tree structure"], page_size=16, check=True)
    assert tree["hit_rate"] > 0.5 and flat["hit_rate"] == 0.0
    # a chain whose prompts extend the whole previous prompt: the table reuses it like the tree
    base = list(range(1000, 1200))
    chain = Workload("chain", [Request("c0", base, 1), Request("c1", base + list(range(2000, 2100)), 1, after="c0"),
                               Request("c2", base + list(range(2000, 2200)), 1, after="c1")])
    t = ab.run_one(chain, cost, ab.ABLATIONS["full system"], page_size=16)
    f = ab.run_one(chain, cost, ab.ABLATIONS["no tree structure"], page_size=16, check=True)
    assert f["cached_tokens"] == t["cached_tokens"] > 0


def test_sequential_workload_chains_each_program() -> None:
    wl = Workload("tree-of-thought", [Request("a", [1], 1, group="q0"), Request("b", [2], 1, group="q0"),
                                      Request("c", [3], 1, after="a", group="q0"), Request("d", [4], 1, group="q1")])
    seq = ab.sequential_workload(wl)
    assert [r.after for r in seq.requests] == [None, "a", "b", None]
    mmlu_like = Workload("mmlu", wl.requests)  # groups are subjects, not programs: nothing chained
    assert [r.after for r in ab.sequential_workload(mmlu_like).requests] == [r.after for r in wl.requests]


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")
def test_no_cache_is_slower_than_the_full_system_on_mmlu() -> None:
    chars = lambda s: [ord(c) for c in s]
    wl = mmlu_workload(chars, DATA, num_subjects=3, per_subject=4)
    cost, _ = load_cost()
    rows = ab.run_ablation([wl], cost, ablations={k: ab.ABLATIONS[k] for k in
                                                  ("full system", "no cache", "no tree structure")})
    by = {r["ablation"]: r for r in rows}
    assert by["full system"]["norm_throughput"] == 1.0 and by["full system"]["hit_rate"] > 0.5
    assert by["no cache"]["norm_throughput"] < 0.8 and by["no cache"]["hit_rate"] == 0.0
    assert by["no tree structure"]["hit_rate"] == 0.0  # the 5-shot prefix is never a whole prompt
