"""experiments/fidelity.py's per-run output: step and request tables, the chained-call turnaround, the
one-row-per-line JSON, and the simulator side of a run (no engine)."""
from __future__ import annotations

import json

import pytest

from experiments.fidelity import run_sim
from experiments.fidelity_tables import REQ_COLUMNS, STEP_COLUMNS, client_turnaround, dumps, tables
from experiments.workloads import Request, Workload
from jaxsgl.sim import LinearCost


def _workload() -> Workload:
    base = list(range(10, 74))
    return Workload("chain", [Request("a", base, 4), Request("b", base + list(range(200, 232)), 3, after="a"),
                              Request("c", list(range(300, 340)), 2)])


def test_tables_of_a_simulated_run() -> None:
    wl = _workload()
    res = run_sim(LinearCost({"tokens": 1e-5}, 0.01, idle_start=0.003), wl, [1.0, 1.015], think_time=0.002,
                  max_total_tokens=2048)
    assert client_turnaround(wl, res.requests) == pytest.approx(0.002)
    assert client_turnaround(Workload("flat", wl.requests[2:]), res.requests) is None
    t = tables(res.requests, res.steps)
    assert t["steps"]["columns"] == list(STEP_COLUMNS) and t["requests"]["columns"] == list(REQ_COLUMNS)
    steps = [dict(zip(STEP_COLUMNS, r)) for r in t["steps"]["rows"]]
    reqs = {r[0]: dict(zip(REQ_COLUMNS, r)) for r in t["requests"]["rows"]}
    assert len(steps) == len(res.steps) and set(reqs) == {"a", "b", "c"}
    assert reqs["a"]["arrival_time"] == 0.0 and reqs["c"]["arrival_time"] == pytest.approx(0.015)
    assert steps[0]["idle"] and steps[0]["dispatch"] == 0.0  # the first step starts on an idle engine
    assert not steps[1]["idle"]  # dispatched while the first ran (overlap)
    by_step = {s["step"]: s for s in steps}
    assert by_step[reqs["b"]["admit_step"]]["idle"]  # b arrives after a and c are done: idle again
    assert all(s["end"] >= s["dispatch"] for s in steps)


def test_dumps_writes_one_table_row_per_line() -> None:
    obj = {"args": {"rates": ["4", "16"]}, "rows": [{"x": 1.5}],
           "runs": [{"sim": {"steps": {"columns": ["a", "b"], "rows": [[1, 0.25], [2, None], [3, True]]}}}]}
    text = dumps(obj)
    assert json.loads(text) == obj
    lines = [line.strip() for line in text.splitlines()]
    assert "[1, 0.25]," in lines and "[2, null]," in lines and "[3, true]" in lines  # one row per line
    assert '"rates": ["4", "16"]' in lines


def test_resimulating_the_committed_h200_run_reproduces_its_simulator_side(tmp_path) -> None:
    """The committed fidelity JSON's sim side is exactly what the committed 8B profile gives on its
    recorded workloads (so a new profile can be judged on any CPU: --resimulate)."""
    from pathlib import Path

    from experiments.fidelity import resimulate

    root = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    recorded = json.loads((root / "fidelity_llama8b_h200.json").read_text())
    out = tmp_path / "resim.json"
    resimulate(root / "fidelity_llama8b_h200.json", str(root / "step_profile_llama8b_h200.json"), None, out)
    again = json.loads(out.read_text())
    assert again["rows"] == recorded["rows"]
    assert [r["sim"] for r in again["runs"]] == [r["sim"] for r in recorded["runs"]]
    assert [r["engine"] for r in again["runs"]] == [r["engine"] for r in recorded["runs"]]  # kept as recorded


def test_engine_step_tables_place_dispatch_before_the_results_processing() -> None:
    """An engine step's end_time comes after its results are processed (process_time): dispatch is
    end - step_time - process_time, and the loop's host phases are kept (session 15: dispatch was off by the
    processing time, which hid when the engine closed each step's arrival window)."""
    recs = [{"rid": "a", "prompt_tokens": 4, "cached_tokens": 0, "output_tokens": 2, "arrival_time": 10.0,
             "admit_step": 0, "first_token_time": 10.02, "finish_time": 10.03, "ttft": 0.02}]
    steps = [{"step": 0, "end_time": 10.020, "step_time": 0.015, "prepare_time": 0.001, "process_time": 0.002},
             {"step": 1, "end_time": 10.030, "step_time": 0.012, "prepare_time": 0.001, "process_time": 0.001}]
    rows = [dict(zip(STEP_COLUMNS, r)) for r in tables(recs, steps)["steps"]["rows"]]
    assert rows[0]["dispatch"] == pytest.approx(0.003) and rows[0]["idle"]  # 10.020 - 0.015 - 0.002 - t0 10.0
    assert rows[1]["dispatch"] == pytest.approx(0.017) and not rows[1]["idle"]  # before step 0's end: pipelined
    assert rows[0]["prepare_time"] == 0.001 and rows[1]["process_time"] == 0.001


def test_chained_lags_count_the_steps_a_chained_call_waited_past_the_first_it_could_make() -> None:
    """The simulator closes a step's arrival window at the previous step's end: a chained call arriving with
    the finish of its predecessor makes the first step dispatched after it (lag 0), one arriving 2 ms later
    (steps take 10 ms) the next (lag 1); a client that queues its call inline (ChainedClient: the engine's
    loop waits for it) makes that step even 2 ms later. Session 15's react on the H200: the engine 24 of 42
    at lag 0, the simulator without a client model 7."""
    from experiments.fidelity_tables import chained_next, table_lags
    from jaxsgl.sim import ChainedClient

    base = list(range(10, 74))
    wl = Workload("chain", [Request("a", base, 4), Request("b", base + list(range(200, 232)), 3, after="a"),
                            Request("c", list(range(300, 340)), 40)])  # c keeps the engine busy
    lags, ends = {}, {}  # ends: when b's step was dispatched, after a's finish
    clients = {"think 0": (0.0, None), "think 2ms": (0.002, None),
               "inline 2ms": (0.0, ChainedClient(turnaround=0.002, inline_probability=1.0, inline_turnaround=0.002)),
               "not inline": (0.0, ChainedClient(turnaround=0.002, inline_probability=0.0, inline_turnaround=0.002))}
    for name, (think, client) in clients.items():
        res = run_sim(LinearCost({}, 0.01), wl, [0.0, 0.0], think_time=think, client=client, max_total_tokens=2048)
        t = tables(res.requests, res.steps)
        lags[name] = table_lags(wl, t)
        assert chained_next(wl, {"engine": t, "sim": t})["sim_chained_next"] == (lags[name][0][1] == 0)
        b = {r[0]: dict(zip(REQ_COLUMNS, r)) for r in t["requests"]["rows"]}["b"]
        a = {r[0]: dict(zip(REQ_COLUMNS, r)) for r in t["requests"]["rows"]}["a"]
        assert b["arrival_time"] == pytest.approx(a["finish_time"] + (think or 0.002 if name != "think 0" else 0.0))
        steps = {r[0]: dict(zip(STEP_COLUMNS, r)) for r in t["steps"]["rows"]}
        ends[name] = steps[b["admit_step"]]["dispatch"] - a["finish_time"]  # when the loop scheduled b's step
    assert lags == {"think 0": [("b", 0)], "think 2ms": [("b", 1)], "inline 2ms": [("b", 0)], "not inline": [("b", 1)]}
    assert ends["think 0"] == pytest.approx(0.0) and ends["inline 2ms"] == pytest.approx(0.002)  # the loop waited


def test_inline_calls_are_drawn_per_request_and_reproducibly() -> None:
    from jaxsgl.sim import ChainedClient

    c = ChainedClient(turnaround=0.0013, inline_probability=0.6, inline_turnaround=0.0005)
    draws = [c.is_inline(f"r{i}") for i in range(2000)]
    assert 0.55 < sum(draws) / len(draws) < 0.65
    assert draws == [c.is_inline(f"r{i}") for i in range(2000)]  # the same calls in every run
    assert draws != [c.is_inline(f"r{i}", seed=1) for i in range(2000)]
    assert not any(ChainedClient(inline_probability=0.0).is_inline(f"r{i}") for i in range(100))
    m = ChainedClient.measured([0.0005, 0.0006, 0.0012, 0.0014, 0.0004], [0, 0, 1, 1, 0])
    assert m.inline_probability == pytest.approx(0.6) and m.inline_turnaround == pytest.approx(0.0005)
    assert m.turnaround == pytest.approx(0.0013)
    assert ChainedClient.from_dict(m.to_dict()) == m


def test_the_fidelity_run_takes_its_client_from_the_profile_when_it_has_one() -> None:
    from experiments.fidelity import sim_client
    from jaxsgl.sim import ChainedClient

    client = ChainedClient(turnaround=0.0013, inline_probability=0.6, inline_turnaround=0.0005)
    assert sim_client("profile", {"client": {**client.to_dict(), "measured": {}}}, 0.0007) == (0.0, client)
    assert sim_client("profile", {}, 0.0007) == (0.0007, None)  # an older profile: the run's median turnaround
    assert sim_client("measured", {"client": client.to_dict()}, 0.0007) == (0.0007, None)
    assert sim_client("0.002", {"client": client.to_dict()}, 0.0007) == (0.002, None)


def test_the_step_model_error_compares_a_cost_with_the_recorded_pipelined_steps_only() -> None:
    """step_model_error predicts each recorded step from its trace features and divides by end - previous end,
    skipping steps dispatched to an idle engine (their wall holds the idle gap) and steps without features."""
    from jaxsgl.sim import LinearCost, step_model_error, trace_features

    cost = LinearCost({"padded_tokens": 1e-4, "decode_ctx": 1e-6}, intercept=0.001)
    base = {"new_tokens": 8, "prefill_tokens": 0, "num_seqs": 8, "num_decode_seqs": 8, "prefill_attn": 0.0,
            "padded_tokens": 8, "padded_seqs": 8, "padded_attn": 256.0}
    rows = [{**base, "decode_ctx": 1000, "end": 1.000, "idle": True},    # 2.8 ms predicted; idle: skipped
            {**base, "decode_ctx": 1000, "end": 1.004, "idle": False},   # 2.8 / 4.0 - 1 = -0.3
            {**base, "decode_ctx": None, "end": 1.008, "idle": False},   # no features: skipped
            {**base, "decode_ctx": 3000, "end": 1.012, "idle": False}]   # 4.8 / 4.0 - 1 = +0.2
    assert trace_features(rows[2]) is None and trace_features(rows[1])["seqs"] == 8
    err = step_model_error(rows, cost)
    assert err["steps"] == 2
    assert err["bias"] == pytest.approx(-0.05) and err["mape"] == pytest.approx(0.25)


def test_a_resimulation_keeps_a_calibrated_client_and_otherwise_prefers_the_new_profiles() -> None:
    from experiments.fidelity import resimulated_client
    from jaxsgl.sim import ChainedClient

    own = {"turnaround": 0.001, "inline_probability": 0.7, "inline_turnaround": 0.0005}
    profile = ChainedClient(0.002, 0.9, 0.0004)
    assert resimulated_client({"sim_client": own, "client_calibration": {"seed": 1}}, profile) == \
        ChainedClient.from_dict(own)
    assert resimulated_client({"sim_client": own, "client_calibration": None}, profile) == profile
    assert resimulated_client({"sim_client": own}, None) == ChainedClient.from_dict(own)
    assert resimulated_client({"sim_client": None}, None) is None
