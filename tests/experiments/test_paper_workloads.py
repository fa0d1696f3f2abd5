"""experiments/paper_workloads.py: cache on/off in the simulator, the new builders, the engine replay."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from experiments import paper_workloads as pw
from experiments.workloads import REPO_ROOT, Request, Workload, synthetic_workload
from jaxsgl.sim import ConstantCost

DATA = Path(os.environ.get("JAXSGL_DATA") or REPO_ROOT.parent / "shared" / "data")
chars = lambda s: [ord(c) for c in s]  # char-level ids: no tokenizer load


def test_cache_off_has_no_hits_and_prefills_more() -> None:
    wl = synthetic_workload(num_groups=4, per_group=6, prefix_len=256, question_len=32, seed=3)
    on, off = pw.simulate_pair(wl, ConstantCost(0.01), page_size=16)
    assert (on["cache"], off["cache"]) == ("on", "off")
    assert off["hit_rate"] == 0.0 and on["hit_rate"] > 0.5
    assert off["prefill_tokens"] == wl.prompt_tokens > on["prefill_tokens"]
    sp = pw.speedups([on, off])[0]
    assert sp["throughput_x"] >= 1.0 and sp["prefill_saved"] == pytest.approx(1 - on["prefill_tokens"] / wl.prompt_tokens)


def test_paired_drops_half_finished_workloads() -> None:
    rows = [{"workload": "a", "cache": "on"}, {"workload": "a", "cache": "off"}, {"workload": "b", "cache": "on"}]
    assert [r["workload"] for r in pw.paired(rows)] == ["a", "a"]


def test_rewrite_puts_the_real_output_in_place_of_the_synthetic_one() -> None:
    parent = Request("p", [1, 2, 3], 2)
    child = Request("c", [1, 2, 3, 50, 51, 9, 9], 1, after="p")
    other = Request("o", [7, 7, 7], 1, after="p")  # does not contain the parent's output: left alone
    by_rid = {r.rid: r for r in (parent, child, other)}
    outs = {"p": [50, 51]}
    sent, got = {"p": [1, 2, 3]}, {"p": [60, 61]}
    assert pw._rewrite(child, by_rid, sent, outs, got) == [1, 2, 3, 60, 61, 9, 9]
    assert pw._rewrite(other, by_rid, sent, outs, got) == [7, 7, 7]
    assert pw._rewrite(parent, by_rid, sent, outs, got) == [1, 2, 3]


def test_parse_sizes() -> None:
    sizes = pw.parse_sizes(["small", "mmlu=3"])
    assert sizes["mmlu"] == {"num_subjects": 3, "per_subject": 2} and sizes["json"] == pw.SIZES["small"]["json"]
    assert pw.parse_sizes(["json=7"])["json"]["num_names"] == 7  # preset defaults to gpu
    assert set(pw.SIZES["gpu"]) == set(pw.WORKLOADS)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")
def test_new_builders_share_prefixes_where_expected() -> None:
    hs = pw.hellaswag_workload(chars, DATA, num_questions=3, shots=5)
    assert len(hs.requests) == 12 and all(r.max_new_tokens == 1 for r in hs.requests)
    by_q: dict[str, list[list[int]]] = {}
    for r in hs.requests:
        by_q.setdefault(r.group, []).append(r.prompt_ids)
    prefix_len = lambda a, b: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    (a, b, *_), (c, *_) = list(by_q.values())[:2]
    assert prefix_len(a, b) > prefix_len(a, c) > 200  # choices share the context too; questions the shots

    judge = pw.llm_judge_workload(chars, DATA, num_articles=2, dimensions=3)
    assert len(judge.requests) == 2 * 4
    branches = [r for r in judge.requests if r.group == "a0" and r.after is None]
    merge = next(r for r in judge.requests if r.rid == "judge0.merge")
    article_len = prefix_len(branches[0].prompt_ids, branches[1].prompt_ids)
    base_len = prefix_len(merge.prompt_ids, branches[0].prompt_ids)  # system prompt + article
    assert article_len >= base_len > 500 and prefix_len(merge.prompt_ids, branches[2].prompt_ids) == base_len
    outs = judge.meta["outputs"]
    assert merge.after == max((r.rid for r in branches), key=lambda rid: len(outs[rid]))
    for r in branches:  # the merge prompt holds every judgement
        assert any(merge.prompt_ids[i:i + len(outs[r.rid])] == outs[r.rid] for i in range(len(merge.prompt_ids)))

    js = pw.json_workload(chars, DATA, num_names=5)
    assert len(js.requests) == 5 and js.optimal_hit_rate(16) == 0.0

    for name in pw.WORKLOADS:  # every preset builds
        wl = pw.build(name, chars, "small", DATA)
        assert wl.requests and all(r.after is None or r.after in {q.rid for q in wl.requests} for r in wl.requests)


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")
def test_engine_cli_on_the_default_model(tmp_path: Path) -> None:
    out = tmp_path / "pw.json"
    pw.engine_main(["--engine", "--workloads", "hellaswag", "--size", "small", "hellaswag=1", "--warm", "none",
                    "--max-running-requests", "4", "--out", str(out)])
    res = json.loads(out.read_text())
    on, off = res["rows"]
    assert (on["cache"], off["cache"]) == ("on", "off") and on["requests"] == off["requests"] == 4
    assert off["hit_rate"] == 0.0 and on["hit_rate"] > 0.3
    assert off["prefill_tokens"] > on["prefill_tokens"]
    assert res["sizes"]["hellaswag"]["num_questions"] == 1 and res["sim_options"]["max_total_tokens"] > 0
    trace = res["step_traces"]["hellaswag-on"]  # each timed step's host phases (where a run's time goes)
    steps = [dict(zip(trace["columns"], r)) for r in trace["rows"]]
    assert len(steps) == on["steps"] and sum(s["num_admitted"] for s in steps) == 4
    assert all(s["prepare_time"] > 0 and s["step_time"] > 0 and s["end_time"] > 0 for s in steps)
