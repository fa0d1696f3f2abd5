"""Every script under benchmarks/ still runs: each in smoke mode (tiny random model, tiny shapes, Pallas
kernels in interpret mode) as a subprocess on the CPU, printing its table and writing its JSON.

The selected scripts start together, JAXSGL_SMOKE_JOBS (default 2) at a time, when the first test
asks for its result; each test then checks one script's exit status, stdout and JSON.
A new script must add its smoke command to SMOKE (test_every_script_has_a_smoke_command).
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
TIMEOUT_S = 600


def _tiny_dir(with_tokenizer: bool = False) -> str:
    """benchmarks/_common.tiny_model_dir(): a 2-layer config for --load-format dummy."""
    sys.path.insert(0, str(BENCH))
    try:
        from _common import tiny_model_dir
    finally:
        sys.path.remove(str(BENCH))
    return str(tiny_model_dir(with_tokenizer))


# script -> its smoke arguments (a callable: made when the run starts); "--out FILE" is appended
SMOKE: dict[str, list[str] | Callable[[], list[str]]] = {
    "attention.py": ["--smoke"],
    "attention_sweep.py": ["--smoke"],
    "host_loop.py": ["--smoke"],
    "decode_step.py": ["--smoke", "--profile", "2,32", "--dispatch-study", "--dispatch-trace", "--decode-config", "32,2,4,2"],
    "mosaic_extend_probe.py": ["--smoke"],
    "executable_reload.py": ["--smoke"],
    "offline_throughput.py": ["--smoke", "--profile"],
    "peer_hf.py": ["--smoke"],
    "prefill_step.py": ["--smoke"],
    "greedy_parity.py": ["--smoke"],
    "tree_of_thought.py": ["--smoke"],
    "step_profile.py": lambda: ["--model-path", _tiny_dir(), "--load-format", "dummy", "--prefill-lens", "16", "32",
                                "--decode", "1x16", "2x16", "--decode-steps", "2", "--max-running-requests", "4",
                                "--seq-buckets", "1", "2", "4", "--chunked-prefill-size", "32", "--stream-lens", "16",
                                "--stream-background", "2", "--stream-requests", "2", "--agent-lens", "8",
                                "--agent-prefix", "32"],
    # their own --smoke runs the default model (constrained.py) or 8 prompts of 32 tokens (serving.py):
    # minutes on 2 cores; the tiny model with the default tokenizer takes seconds
    "constrained.py": lambda: ["--smoke", "--model-path", _tiny_dir(True), "--load-format", "dummy"],
    "cold_start.py": ["--smoke"],
    "compare_decode.py": lambda: [str(ROOT / "benchmarks/results/decode_profile_s18_8b_h200.json"),
                                  str(ROOT / "benchmarks/results/decode_roofline_8b_h200.json"), "--markdown"],
    "client_profile.py": lambda: ["--model-path", _tiny_dir(), "--load-format", "dummy", "--chains", "2",
                                  "--calls", "3", "--prefix", "16", "--own", "8", "--max-new-tokens", "2",
                                  "--background", "1"],
    "serving.py": lambda: ["--model", _tiny_dir(True), "--load-format", "dummy", "--num-prompts", "4",
                           "--input-len", "16", "--output-len", "4", "--rates", "inf", "--datasets", "random"],
    "router.py": ["--groups", "2", "--per-group", "2", "--system-words", "20", "--max-new-tokens", "2",
                  "--concurrency", "4"],  # its default model is already tiny (2 workers)
}
# scripts whose smoke run reads the paper's workloads (../shared/data, or $JAXSGL_DATA)
DATA = Path(os.environ.get("JAXSGL_DATA") or ROOT.parent / "shared" / "data")
NEEDS_DATA = {"constrained.py", "offline_throughput.py", "peer_hf.py", "tree_of_thought.py"}
NEEDS = {"peer_hf.py": "torch", "serving.py": "sglang", "router.py": "sglang_router"}  # optional (test) dependencies of the peers/clients


def _missing(name: str) -> str | None:
    """The module a script needs that is not installed, if any."""
    mod = NEEDS.get(name)
    return mod if mod is not None and importlib.util.find_spec(mod) is None else None


def _scripts() -> list[str]:
    return sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def _run(name: str, out_dir: Path) -> dict:
    args = SMOKE[name]() if callable(SMOKE[name]) else list(SMOKE[name])
    out = out_dir / f"{Path(name).stem}.json"
    env = {**os.environ, "JAXSGL_PROGRESS": "0", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    try:
        res = subprocess.run([sys.executable, str(BENCH / name), *args, "--out", str(out)], cwd=out_dir,
                             capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
        rc, stdout, stderr = res.returncode, res.stdout, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, stdout, stderr = "timeout", str(e.stdout or ""), str(e.stderr or "")
    return {"rc": rc, "stdout": stdout, "stderr": stderr, "out": out, "seconds": time.perf_counter() - t0}


@pytest.fixture(scope="module")
def smoke_results(request, tmp_path_factory) -> dict:
    """name -> result of its smoke run, for the scripts this session selected (run together)."""
    selected = sorted({item.callspec.params["name"] for item in request.session.items
                       if getattr(item, "callspec", None) is not None and Path(str(item.fspath)) == Path(__file__)
                       and "name" in item.callspec.params})
    jobs = int(os.environ.get("JAXSGL_SMOKE_JOBS", "2"))
    base = tmp_path_factory.mktemp("bench_smoke")
    dirs = {n: base / Path(n).stem for n in selected}
    for d in dirs.values():
        d.mkdir()
    with ThreadPoolExecutor(max(jobs, 1)) as pool:  # the subprocesses run in parallel; threads only wait
        futures = {n: pool.submit(_run, n, dirs[n]) for n in selected if not _missing(n)}
        return {n: f.result() for n, f in futures.items()}


def test_every_script_has_a_smoke_command():
    assert set(_scripts()) == set(SMOKE), "add each benchmarks/*.py script's smoke arguments to SMOKE"


@pytest.mark.parametrize("name", sorted(SMOKE))
def test_benchmark_smoke(name, smoke_results):
    if _missing(name):
        pytest.skip(f"{name} needs {_missing(name)}, which is not installed")
    if name in NEEDS_DATA and not DATA.is_dir():
        pytest.skip(f"{name} reads benchmark data, not found at {DATA} (set JAXSGL_DATA)")
    r = smoke_results[name]
    assert r["rc"] == 0, f"{name} failed ({r['seconds']:.0f}s):\n{r['stderr'][-4000:]}"
    assert r["stdout"].strip(), f"{name} printed no table"
    data = json.loads(r["out"].read_text())
    assert data, f"{name} wrote an empty JSON"
