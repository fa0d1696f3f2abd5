"""Shared setup of the simulator notebooks: fast mode, the step profile, capacity.

    from experiments.sim_common import FAST, load_cost, capacity
    cost, prof = load_cost()                 # $JAXSGL_PROFILE, else the committed CPU profile
    cap = capacity(requests, cost, **opts)   # requests/s of an offline run (all at t = 0)

FAST (env JAXSGL_FAST=1) shrinks every notebook to a CI-sized run. Host only (no JAX).
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxsgl.sim import LinearCost, SimResult, Simulator, load_profile, offline, step_features

from experiments.workloads import REPO_ROOT

FAST = os.environ.get("JAXSGL_FAST", "0") == "1"
RESULTS = REPO_ROOT / "benchmarks" / "results"
DEFAULT_PROFILE = RESULTS / "step_profile_smollm2_cpu.json"


def load_cost(path: str | os.PathLike | None = None, target: str = "wall") -> tuple[LinearCost, dict]:
    """(cost model, profile JSON) of `path`, else $JAXSGL_PROFILE, else the committed CPU profile."""
    p = Path(path or os.environ.get("JAXSGL_PROFILE") or DEFAULT_PROFILE)
    if not p.is_absolute() and not p.exists():
        p = REPO_ROOT / p
    prof = json.loads(p.read_text())
    return load_profile(prof, target), prof


def describe(prof: dict, target: str = "wall") -> str:
    """One line: model, device, JAX version and the fit's error."""
    fit = prof["cost"][target]["fit"]
    return (f"{prof['model']} on {prof['device']} (jax {prof['jax_version']}, attention "
            f"{prof['attention_backend']}, overlap {prof['overlap']}): {target} fit over {fit['n']} steps, "
            f"mean abs error {fit['mape']:.1%} (cross-validated {fit['cv_mape']:.1%})")


def step_seconds(cost: LinearCost, batch: int = 32, context: int = 512) -> float:
    """Predicted time of one decode step of `batch` sequences at `context` tokens (a time unit)."""
    return cost.predict(step_features([(1, context, False)] * batch, cost.padding))


def capacity(requests: Sequence[Any], cost: LinearCost, **options: Any) -> tuple[float, SimResult]:
    """Requests per second of an offline run (every request at t = 0) and that run."""
    res = Simulator(cost, **options).run(requests, offline(sum(getattr(r, "after", None) is None
                                                               for r in requests)))
    return res.summary["req_per_s"], res
