"""The step-cost model: features of a batch, the least-squares fit, profiles on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest

from jaxsgl.sim import LinearCost, Padding, fit_best, fit_linear, load_profile, step_features

TRUE = {"tokens": 2e-5, "decode_ctx": 3e-8, "prefill_attn": 4e-10}


def random_steps(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    steps = []
    for _ in range(n):
        seqs = [(int(rng.integers(1, 2048)), int(rng.integers(0, 4096)), True) for _ in range(rng.integers(0, 3))]
        seqs += [(1, int(rng.integers(16, 8192)), False) for _ in range(rng.integers(0, 128))]
        steps.append(step_features(seqs or [(1, 10, False)]))
    return steps


def test_fit_recovers_known_coefficients() -> None:
    pts = random_steps(200)
    times = [0.004 + sum(c * p[f] for f, c in TRUE.items()) for p in pts]
    cost = fit_linear(pts, times, list(TRUE))
    assert cost.intercept == pytest.approx(0.004, rel=1e-6)
    for f, c in TRUE.items():
        assert cost.coef[f] == pytest.approx(c, rel=1e-6)
    assert cost.fit["mape"] < 1e-9 and cost.fit["cv_mape"] < 1e-9


def test_fit_with_noise_and_an_irrelevant_feature() -> None:
    pts = random_steps(300, seed=1)
    rng = np.random.default_rng(2)
    times = [(0.004 + sum(c * p[f] for f, c in TRUE.items())) * rng.uniform(0.97, 1.03) for p in pts]
    cost = fit_linear(pts, times, [*TRUE, "seqs"])
    for f, c in TRUE.items():
        assert cost.coef[f] == pytest.approx(c, rel=0.1)
    assert cost.coef["seqs"] >= 0.0  # non-negative least squares
    assert cost.fit["mape"] < 0.03 and cost.fit["cv_mape"] < 0.03
    best, chosen, fits = fit_best(pts, times)
    assert chosen.fit["cv_mape"] == min(f["fit"]["cv_mape"] for f in fits.values()) < 0.03


def test_features_of_a_mixed_step_and_padding() -> None:
    pad = Padding(token_buckets=[16, 32, 64, 128], seq_buckets=[1, 8], page_buckets=[4, 8], page_size=16)
    f = step_features([(100, 20, True), (1, 40, False), (1, 9, False)], pad)
    assert f["tokens"] == 102 and f["prefill_tokens"] == 100 and f["seqs"] == 3 and f["decode_seqs"] == 2
    assert f["decode_ctx"] == 41 + 10
    assert f["prefill_attn"] == 100 * (20 + 101 / 2)
    assert f["padded_tokens"] == 128 and f["padded_seqs"] == 8
    assert f["padded_attn"] == 128 * 8 * 16  # 120 tokens of KV -> 8 pages -> bucket 8
    assert Padding.fit([16, 32], 100) == 128  # past the last bucket: doubling


def test_profile_round_trip(tmp_path) -> None:
    cost = LinearCost({"padded_tokens": 1e-4}, 0.01, Padding([16, 32], [1], [1], 16), {"mape": 0.05})
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"cost": {"wall": cost.to_dict(), "device": cost.to_dict()}}))
    back = load_profile(path)
    assert back == cost
    assert back.predict(step_features([(20, 0, True)], back.padding)) == pytest.approx(0.01 + 32e-4)


def test_the_padded_table_follows_a_memory_to_compute_knee() -> None:
    """Step time flat until ~256 padded tokens, then linear (an 8B step on an H200): fit_best picks the
    per-bucket table over a line, and predicts every bucket; past the last bucket it extends the last
    segment. Without two points in every bucket the table is not a candidate."""
    from jaxsgl.sim.cost_model import bucket_weights

    pad = Padding(token_buckets=[16, 32, 64, 128, 256, 512, 1024, 2048], seq_buckets=[1, 8, 64], page_size=16)
    rng = np.random.default_rng(0)
    knee = lambda padded: max(0.0045, 2e-5 * padded)  # noqa: E731
    pts, times = [], []
    for _ in range(300):
        n = int(rng.integers(1, 2048))
        f = step_features([(n, int(rng.integers(0, 1024)), True)], pad)
        pts.append(f)
        times.append(knee(f["padded_tokens"]) + 2e-8 * f["decode_ctx"] + 1e-10 * f["prefill_attn"])
    name, cost, fits = fit_best(pts, times, padding=pad)
    assert name == "padded_table" and fits["padded"]["fit"]["cv_mape"] > 3 * cost.fit["cv_mape"]
    for b in pad.token_buckets:
        f = step_features([(b, 0, True)], pad)
        assert cost.predict(f) == pytest.approx(knee(b) + 1e-10 * f["prefill_attn"], rel=0.02)
    assert bucket_weights(4096, pad.token_buckets) == {**{f"bucket_{b}": 0.0 for b in pad.token_buckets},
                                                        "bucket_1024": -2.0, "bucket_2048": 3.0}
    few = [p for p in pts if p["padded_tokens"] != 16][:100]
    name, _, fits = fit_best(few, [knee(p["padded_tokens"]) for p in few], padding=pad)
    assert "padded_table" not in fits


def test_the_simulator_pads_steps_to_the_simulated_engines_buckets() -> None:
    """A profile measured with chunk 2,048 and 256 running (buckets ..., 1024, 2048, 2304) used for an engine
    with chunk 512 and 64 running: that engine pads a 520-token step to 640, not to 1,024, and the measured
    table is read between its buckets (session 15: the simulator had used the profile's own buckets)."""
    from jaxsgl.scheduler.batch import StepInputBuilder
    from jaxsgl.sim import Simulator

    profiled = Padding(token_buckets=[16, 256, 1024, 2048, 2304], seq_buckets=[1, 256], page_buckets=[512])
    table = {"bucket_16": 0.004, "bucket_256": 0.008, "bucket_1024": 0.016, "bucket_2048": 0.040,
             "bucket_2304": 0.045}
    cost = LinearCost(table, 0.0, profiled)
    sim = Simulator(cost, max_total_tokens=16384, chunked_prefill_size=512, max_running_requests=64)
    engine = StepInputBuilder.for_engine(16, prefill_budget=512, max_running_requests=64, max_context_len=16384)
    assert sim.cost.padding.token_buckets == engine.token_buckets and engine.token_buckets[-1] == 640
    assert sim.cost.padding.page_buckets == [512]  # the profile's: they follow its attention impl
    seqs = [(512, 0, True)] + [(1, 100, False)] * 8
    assert step_features(seqs, sim.cost.padding)["padded_tokens"] == 640
    assert sim.cost.predict(step_features(seqs, sim.cost.padding)) == pytest.approx(0.008 + 0.008 * 384 / 768)
    assert cost.predict(step_features(seqs, profiled)) == pytest.approx(0.016)  # the profiled engine's 1,024
