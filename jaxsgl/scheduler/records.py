"""Per-request records: one flat dict per finished request, the same for the Engine and the simulator.

The scheduler's `Req` knows tokens, the cached prefix and the step of first admission; the
times it does not keep (arrival, first token, finish) come in a `RequestTimes`, all on one
clock (the Engine: time.perf_counter; the simulator: its simulated clock). The admission time
is read from the per-step trace: the dispatch time of the step that first admitted the request,
`end_time - step_time` of that step's record. Every time column is relative to `t0`.

    recs = request_records(done, sched.trace_records(), t0=start)   # done: [(Req, RequestTimes)]
    df = as_frame(recs)                                            # pandas, REQUEST_COLUMNS

Host only, no pandas at import time.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jaxsgl.scheduler.request import Req

# Column order of every per-request DataFrame (times in seconds, relative to t0).
REQUEST_COLUMNS: tuple[str, ...] = (
    "rid", "prompt_tokens", "output_tokens", "cached_tokens", "match_ratio",
    "arrival_time", "admit_time", "first_token_time", "finish_time",
    "wait_time", "ttft", "e2e_latency", "admit_step", "num_retractions", "finish_reason",
)


@dataclass
class RequestTimes:
    """Times of one request on the caller's clock: when it was submitted, when its first
    output token was delivered and when it finished (None if it never got there)."""
    arrival: float
    first_token: float | None = None
    finish: float | None = None


def _reason(value: object) -> str | None:
    """'length', 'stop', 'abort', ... from the Engine's reason dicts or a plain string."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return str(value.get("type"))
    return str(value)


def _sub(t: float | None, t0: float) -> float | None:
    return None if t is None else t - t0


def admit_times(trace: Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """step -> dispatch time of that step (end_time - step_time), for steps that have both."""
    out = {}
    for rec in trace:
        if rec.get("end_time") is not None and rec.get("step_time") is not None:
            out[int(rec["step"])] = rec["end_time"] - rec["step_time"]
    return out


def request_record(req: Req, times: RequestTimes, admit_time: float | None, t0: float = 0.0) -> dict[str, Any]:
    """The flat record of one request (keys: REQUEST_COLUMNS). Reads only; mutates nothing."""
    arrival = times.arrival - t0
    admit, first, finish = _sub(admit_time, t0), _sub(times.first_token, t0), _sub(times.finish, t0)
    prompt = len(req.prompt_ids)
    return {
        "rid": req.rid, "prompt_tokens": prompt, "output_tokens": req.num_generated,
        "cached_tokens": req.cached_len, "match_ratio": req.cached_len / prompt if prompt else 0.0,
        "arrival_time": arrival, "admit_time": admit, "first_token_time": first, "finish_time": finish,
        "wait_time": None if admit is None else admit - arrival,
        "ttft": None if first is None else first - arrival,
        "e2e_latency": None if finish is None else finish - arrival,
        "admit_step": req.first_admit_step, "num_retractions": req.num_retractions,
        "finish_reason": _reason(req.finish_reason),
    }


def request_records(done: Iterable[tuple[Req, RequestTimes]], trace: Sequence[Mapping[str, Any]],
                    t0: float = 0.0) -> list[dict[str, Any]]:
    """Records of `done` requests; admission times come from `trace` (Scheduler.trace_records())."""
    admits = admit_times(trace)
    return [request_record(req, times, admits.get(req.first_admit_step or -1), t0) for req, times in done]


def as_frame(records: Iterable[Mapping[str, Any]], columns: Sequence[str] = REQUEST_COLUMNS) -> Any:
    """A pandas DataFrame with exactly `columns` (imports pandas on call)."""
    import pandas as pd

    return pd.DataFrame(list(records), columns=list(columns))
