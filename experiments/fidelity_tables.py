"""The fidelity run's tables: both sides' per-step and per-request records as column tables (one row per line in
the JSON), and the figures read from them (chained calls' lags, the step model's error on the engine's steps).
Host only."""
from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxsgl.sim import chained_lags, step_model_error

from experiments.workloads import Workload

# an engine step's cost-model features beyond its counts (jaxsgl.sim.trace_features), where it recorded them
FEATURE_COLUMNS = ("decode_ctx", "prefill_attn", "padded_tokens", "padded_seqs", "padded_attn")
STEP_COLUMNS = ("step", "num_seqs", "num_prefill_seqs", "num_decode_seqs", "new_tokens", "prefill_tokens",
                "cached_tokens", "num_admitted", "queue_len", "num_running", "dispatch", "end", "step_time", "idle",
                "prepare_time", "process_time")
REQ_COLUMNS = ("rid", "prompt_tokens", "cached_tokens", "output_tokens", "arrival_time", "admit_step",
               "first_token_time", "finish_time", "ttft")


def client_turnaround(wl: Workload, recs: Sequence[dict]) -> float | None:
    """Median seconds from a call's finish to the arrival of the call chained after it (None: no chains)."""
    by_rid = {r["rid"]: r for r in recs}
    gaps = [by_rid[r.rid]["arrival_time"] - by_rid[r.after]["finish_time"] for r in wl.requests
            if r.after is not None and r.rid in by_rid and r.after in by_rid]
    return float(np.median(gaps)) if gaps else None


def table_lags(wl: Workload, side: dict) -> list[tuple[str, int]]:
    """chained_lags (jaxsgl.sim.client) of one side's tables()."""
    pairs = [(r.rid, r.after) for r in wl.requests if r.after is not None]
    reqs = [dict(zip(side["requests"]["columns"], r)) for r in side["requests"]["rows"]]
    steps = [dict(zip(side["steps"]["columns"], r)) for r in side["steps"]["rows"]]
    return chained_lags(pairs, reqs, [(s["step"], s["dispatch"], s["end"]) for s in steps if s["end"] is not None])


def step_model(run: dict, cost: Any) -> dict:
    """step_model_bias / _mape: the cost model against the engine's own pipelined steps (jaxsgl.sim
    step_model_error; none where the engine's steps carry no features: --engine-process, older runs)."""
    side = run["engine"]["steps"]
    err = step_model_error([dict(zip(side["columns"], r)) for r in side["rows"]], cost)
    return {"step_model_bias": err["bias"], "step_model_mape": err["mape"]} if err["steps"] else {}


def chained_next(wl: Workload, run: dict) -> dict:
    """engine_/sim_chained_next: the fraction of the run's chained calls that made the first step
    dispatched after their predecessor's step ended (chained_lags 0; None without chained calls)."""
    out = {}
    for side in ("engine", "sim"):
        lags = [lag for _, lag in table_lags(wl, run[side])]
        out[f"{side}_chained_next"] = sum(lag == 0 for lag in lags) / len(lags) if lags else None
    return out


def tables(recs: Sequence[dict], steps: Sequence[dict]) -> dict:
    """A run's request records and step trace as column tables, times from its first arrival."""
    t0 = min((r["arrival_time"] for r in recs), default=0.0)
    rnd = lambda v, shift=0.0: None if v is None else round(v - shift, 6) if isinstance(v, float) else v
    columns = STEP_COLUMNS + (FEATURE_COLUMNS if any(s.get(FEATURE_COLUMNS[0]) is not None for s in steps) else ())
    rows, prev_end = [], float("-inf")
    for s in steps:
        end = s.get("end_time")
        # end is after the step's results were processed (the engine's process_time; the simulator has none)
        dispatch = None if end is None or s.get("step_time") is None else \
            end - s["step_time"] - (s.get("process_time") or 0.0)
        row = {**s, "dispatch": rnd(dispatch, t0), "end": rnd(end, t0), "step_time": rnd(s.get("step_time")),
               "prepare_time": rnd(s.get("prepare_time")), "process_time": rnd(s.get("process_time")),
               "idle": dispatch is not None and dispatch >= prev_end - 1e-9}
        rows.append([row.get(c) for c in columns])
        prev_end = end if end is not None else prev_end
    times = ("arrival_time", "first_token_time", "finish_time")
    req_rows = [[rnd(r[c], t0) if c in times else rnd(r[c]) for c in REQ_COLUMNS]
                for r in sorted(recs, key=lambda r: r["arrival_time"])]
    return {"steps": {"columns": list(columns), "rows": rows},
            "requests": {"columns": list(REQ_COLUMNS), "rows": req_rows}}


def dumps(obj: Any, indent: int = 0) -> str:
    """JSON with one line per list of scalars (a table row), indented otherwise."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(obj, dict) and obj:
        items = [f"{inner}{json.dumps(str(k))}: {dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(inner + dumps(v, indent + 1) for v in obj) + f"\n{pad}]"
    return json.dumps(obj, separators=(", ", ": "))
