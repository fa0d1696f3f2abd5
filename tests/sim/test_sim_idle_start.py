"""The idle-start cost: a step dispatched with nothing in flight pays LinearCost.idle_start on top of
its steady (overlapped) cost; fit_profile fits it from the idle phase; old profiles are unchanged."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.workloads import Request
from jaxsgl.sim import ConstantCost, LinearCost, Simulator, load_profile, step_features
from jaxsgl.sim.cost_model import fit_profile, idle_start_flags

ROOT = Path(__file__).resolve().parents[2]


def _durations(res) -> dict[int, float]:
    """step -> seconds it ran: from max(dispatch, previous end) to its end."""
    out, prev_end = {}, 0.0
    for s in sorted(res.steps, key=lambda s: s["step"]):
        dispatch = s["end_time"] - s["step_time"]
        out[s["step"]] = s["end_time"] - max(dispatch, prev_end)
        prev_end = s["end_time"]
    return out


@pytest.mark.parametrize("overlap", [True, False])
def test_idle_start_is_added_only_to_steps_dispatched_to_an_idle_engine(overlap: bool) -> None:
    reqs = [Request("a", list(range(10, 40)), 3), Request("b", list(range(100, 130)), 3)]
    arrivals = [0.0, 5.0]  # b arrives long after a finished: both start on an idle engine
    opts = dict(max_total_tokens=2048, disable_overlap_schedule=not overlap)
    base = Simulator(ConstantCost(0.01), **opts).run(reqs, arrivals)
    idle = Simulator(LinearCost({}, 0.01, idle_start=0.004), **opts).run(reqs, arrivals)
    assert base.summary["steps"] == idle.summary["steps"] == 6
    first = {s["step"] for s in base.steps if s["num_admitted"]}  # the two requests' first steps
    assert _durations(base) == pytest.approx(dict.fromkeys(_durations(base), 0.01))
    for step, t in _durations(idle).items():
        assert t == pytest.approx(0.014 if step in first or not overlap else 0.01)  # sync: never in flight
    assert {r["rid"]: r["ttft"] for r in idle.requests} == pytest.approx({"a": 0.014, "b": 0.014})


def test_busy_admission_pays_no_idle_start() -> None:
    reqs = [Request("a", list(range(10, 40)), 20), Request("b", list(range(100, 130)), 3)]
    res = Simulator(LinearCost({}, 0.01, idle_start=0.004), max_total_tokens=2048).run(reqs, [0.0, 0.05])
    b = next(r for r in res.requests if r["rid"] == "b")
    steps = {s["step"]: s for s in res.steps}
    first_b = steps[b["admit_step"]]
    assert first_b["num_seqs"] == 2  # joined a's running batch, dispatched while a's previous step ran
    assert first_b["end_time"] - steps[first_b["step"] - 1]["end_time"] == pytest.approx(0.01)  # no idle start


def test_old_profiles_load_without_idle_start() -> None:
    old = {"cost": {"wall": {"intercept": 0.005, "coef": {"tokens": 1e-5}, "fit": {}, "padding": None}}}
    cost = load_profile(old)
    assert cost.idle_start == 0.0 and Simulator(cost).idle_start == 0.0
    back = LinearCost.from_dict({**cost.to_dict(), "idle_start": 0.003})
    assert back.idle_start == 0.003 and LinearCost.from_dict(back.to_dict()) == back


def _profile(seed: int = 0, idle_phase: bool = True) -> list[dict]:
    """Synthetic step-profile points: wall = 2 ms + 20 us/token + 30 us/seq (+-2%); each
    configuration's first step +6 ms (B > 1: + 1 ms per request more), idle-phase steps +3 ms."""
    rng = np.random.default_rng(seed)
    wall = lambda f: (0.002 + 2e-5 * f["tokens"] + 3e-5 * f["seqs"]) * rng.uniform(0.98, 1.02)
    configs = [(f"prefill:1x{n}", 1, [[(c, c * k, True)] for k in range(n // c)])
               for n, c in [(2048, 512), (1024, 256)]]
    configs += [(f"decode:{b}x{ctx}", b, [[(ctx, 0, True)]] + [[(1, ctx + k, False)] * b for k in range(1, 10)])
                for b, ctx in [(1, 256), (4, 256), (16, 512), (32, 1024), (64, 256)]]
    points = []
    for name, b, steps in configs:
        for k, seqs in enumerate(steps):
            f = step_features(seqs)
            extra = (0.006 + 0.001 * (b - 1)) if k == 0 else 0.0
            points.append({**f, "wall": wall(f) + extra, "device": wall(f), "config": name})
    if idle_phase:
        for n in (16, 64, 256):
            for _ in range(3):
                f = step_features([(n, 256, True)])
                points.append({**f, "wall": wall(f) + 0.003, "device": wall(f), "config": f"idle:1x{n}",
                               "idle": True})
    points[12]["wall"] *= 5  # a stall
    return points


def test_fit_profile_separates_steady_cost_idle_start_and_stalls() -> None:
    best, cost, _ = fit_profile(_profile(), padding=None)
    assert cost.intercept == pytest.approx(0.002, abs=3e-4)
    assert cost.predict(step_features([(100, 0, True), (1, 50, False)])) == pytest.approx(0.002 + 101 * 2e-5 + 6e-5,
                                                                                          rel=0.03)
    assert cost.idle_start == pytest.approx(0.003, abs=5e-4)
    assert cost.fit["stalls_dropped"] == 1 and cost.fit["idle_points"] == 9
    assert cost.fit["idle_config_starts_median"] == pytest.approx(0.006, abs=5e-4)  # B = 1 starts only
    _, old, _ = fit_profile(_profile(idle_phase=False), padding=None)
    assert old.idle_start == 0.0 and old.intercept == pytest.approx(0.002, abs=3e-4)


def test_idle_flags_of_old_profiles_are_the_first_step_of_each_configuration() -> None:
    pts = [{"config": "a"}, {"config": "a"}, {"config": "b"}, {"config": "idle:1x16", "idle": True},
           {"config": "idle:1x16", "idle": True}, {"config": "c", "idle": False}]
    assert idle_start_flags(pts) == [True, False, True, True, True, False]


def test_step_profile_refit_rewrites_the_cost_from_stored_points(tmp_path) -> None:
    prof = {"padding": None, "points": _profile(), "cost": {"wall": {"coef": {}, "intercept": 1.0}}}
    path = tmp_path / "p.json"
    path.write_text(json.dumps(prof))
    run = lambda *a: subprocess.run([sys.executable, str(ROOT / "benchmarks" / "step_profile.py"), "--refit", str(path),
                                     *a], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert run().returncode == 0
    back = json.loads(path.read_text())
    assert back["points"] == prof["points"] and "refit" in back and set(back["cost"]) == {"wall", "device"}
    assert load_profile(back).idle_start == pytest.approx(0.003, abs=5e-4)
    out = tmp_path / "q.json"
    r = run("--idle-start", "0.0042", "--note", "by hand", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert load_profile(out).idle_start == 0.0042 and json.loads(out.read_text())["refit"]["note"] == "by hand"
