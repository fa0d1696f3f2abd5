"""benchmarks/cold_start.py's starts run in the caller's environment: the packages a device script puts on
PYTHONPATH (the carried transformers) are the ones a timed start imports."""
import importlib.util
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cold_start():
    spec = importlib.util.spec_from_file_location("cold_start", ROOT / "benchmarks" / "cold_start.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines functions only: main() runs under __main__
    return module


def test_a_start_keeps_the_callers_pythonpath_behind_the_repository(monkeypatch, tmp_path):
    cold_start = _cold_start()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/tmp/site", "/opt/more"]))
    env = cold_start.child_env(tmp_path)
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/tmp/site", "/opt/more"]
    assert env["JAXSGL_CACHE"] == str(tmp_path)
    monkeypatch.delenv("PYTHONPATH")
    assert cold_start.child_env(tmp_path)["PYTHONPATH"] == str(ROOT)
