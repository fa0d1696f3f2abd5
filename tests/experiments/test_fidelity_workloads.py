"""experiments/fidelity.py's workloads: every paper workload it checks, and held-out traces (another seed) that
share no question, article or call with the checked trace (--client-turnaround calibrate measures on them)."""
from __future__ import annotations

import pytest

from experiments.fidelity import build_workload, root_arrivals, run_sim
from experiments.workloads import data_dir
from jaxsgl.sim import ConstantCost


def _has_data() -> bool:
    try:
        return data_dir().is_dir()
    except FileNotFoundError:  # the benchmark data lives beside the repository, not in it
        return False


chars = lambda s: [ord(c) for c in s]  # char-level ids: no tokenizer load


@pytest.mark.skipif(not _has_data(), reason="benchmark data (../shared/data or $JAXSGL_DATA) not found")
@pytest.mark.parametrize("name,size,requests", [("hellaswag", 3, 12), ("llm-judge", 2, 14), ("multi-turn-chat", 2, 8)])
def test_a_held_out_trace_shares_no_question_with_the_checked_one(name: str, size: int, requests: int) -> None:
    checked, held = build_workload(name, chars, size), build_workload(name, chars, size, seed=1)
    assert len(checked.requests) == len(held.requests) == requests
    # the first request of each question / article / conversation holds what makes it that one
    firsts = lambda wl: {tuple(r.prompt_ids) for r in wl.requests if r.after is None}  # noqa: E731
    assert not firsts(checked) & firsts(held)
    res = run_sim(ConstantCost(0.01), checked, root_arrivals(checked, 16.0), max_running_requests=8,
                  chunked_prefill_size=512, max_total_tokens=200_000)
    assert len(res.requests) == requests and res.summary["hit_rate"] > 0.3


def test_an_unknown_workload_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown workload 'hella'"):
        build_workload("hella", chars)
