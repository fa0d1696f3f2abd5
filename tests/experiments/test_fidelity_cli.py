"""experiments/fidelity.py end to end on the CPU (a tiny random model with the default tokenizer): the command
the GPU fidelity run uses (`benchmarks/device/fidelity.sh`: the client measured on the engine first, then a
chained workload through the engine and the simulator), so that it cannot break unseen before a device call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("JAXSGL_DATA") or ROOT.parent / "shared" / "data")


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark data not at {DATA}")
@pytest.mark.parametrize("client_mode", ["measure", "calibrate"])
def test_fidelity_cli_measures_the_client_then_compares_engine_and_simulator(tmp_path: Path, client_mode: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from _common import tiny_model_dir
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "fidelity.json"
    env = {**os.environ, "JAXSGL_PROGRESS": "0", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "experiments.fidelity", "--model-path", str(tiny_model_dir(True)),
                          "--load-format", "dummy", "--profile", str(ROOT / "benchmarks/results/step_profile_smollm2_cpu.json"),
                          "--workloads", "tree-of-thought", "--size", "tree-of-thought=1", "--rates", "16",
                          "--max-running-requests", "16", "--client-turnaround", client_mode, "--out", str(out)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    (row,), (run,) = data["rows"], data["runs"]
    assert row["requests"] == 30 and row["engine_hit_rate"] > 0.5
    client = run["sim_client"]  # measured on this engine before the run: its own chained workload, or
    calibration = run["client_calibration"]  # a held-out trace of the same workload at the same rate
    if client_mode == "calibrate":
        assert calibration["seed"] == 1 and calibration["requests"] == 30 and calibration["chained_calls"] > 0
        assert client["inline_probability"] == calibration["inline_calls"] / calibration["chained_calls"]
    else:
        assert calibration is None
    assert 0.0 <= client["inline_probability"] <= 1.0 and client["turnaround"] > 0
    assert run["sim_think_time_s"] == 0.0  # the client model, not a median think time, drove the simulation
    assert row["engine_chained_next"] is not None and row["sim_chained_next"] is not None
    assert run["engine"]["steps"]["rows"] and run["sim"]["requests"]["rows"]
    # the profile against the engine's own steps (their features kept): SmolLM2's CPU profile over-predicts
    # every step of this 2-layer model
    assert row["step_model_bias"] > 1.0 and row["step_model_mape"] >= row["step_model_bias"]
    assert "decode_ctx" in run["engine"]["steps"]["columns"] and "decode_ctx" not in run["sim"]["steps"]["columns"]
