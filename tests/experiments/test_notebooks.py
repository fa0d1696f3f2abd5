"""Every simulator notebook is committed executed, and runs in its fast mode (JAXSGL_FAST=1) without error."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"
NOTEBOOKS = ["fairness.ipynb", "overlap_sweep.ipynb", "eviction.ipynb", "paper_workloads.ipynb", "ablation.ipynb",
             "multi_instance.ipynb", "tokenization.ipynb"]


def _needs() -> None:
    for mod in ("nbformat", "nbconvert", "ipykernel", "matplotlib", "pandas"):
        pytest.importorskip(mod, reason="pip install -e '.[experiments]'")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_with_outputs(name: str) -> None:
    _needs()
    import nbformat

    path = EXPERIMENTS / name
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), "commit the notebook executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


NEEDS_DATA = {"eviction.ipynb", "paper_workloads.ipynb", "ablation.ipynb", "multi_instance.ipynb",
              "tokenization.ipynb"}


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_fast_mode(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _needs()
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor

    path = EXPERIMENTS / name
    data = Path(os.environ.get("JAXSGL_DATA") or EXPERIMENTS.parent.parent / "shared" / "data")
    if name in NEEDS_DATA and not data.is_dir():
        pytest.skip(f"{name} reads the paper's workloads, not found at {data} (set JAXSGL_DATA)")
    monkeypatch.setenv("JAXSGL_FAST", "1")
    nb = nbformat.read(path, as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(nb, {"metadata": {"path": str(EXPERIMENTS)}})
