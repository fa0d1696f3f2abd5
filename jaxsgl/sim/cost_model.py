"""Step cost models: how long one engine step takes, from the shape of its batch.

The model is linear in a few features of the step (a fitted profile picks which):

    step_time = intercept + sum_f coef[f] * feature[f]

Features of a batch (one SeqWork per sequence: num_new tokens fed, cached_len tokens of KV before):

    tokens          new tokens (prefill + decode)          -> weight GEMMs (compute-bound regime)
    prefill_tokens  new tokens of prefill sequences
    seqs            sequences; decode_seqs: decoding ones  -> per-sequence work (sampling, tables)
    decode_ctx      sum of KV lengths of decode sequences  -> decode attention reads the whole KV
    prefill_attn    sum over prefill sequences of num_new * (cached_len + (num_new + 1) / 2)
                    (query-key pairs of causal attention)  -> prefill/extend attention FLOPs
    padded_tokens   tokens rounded up to the engine's token bucket (what the jitted step computes)
    padded_attn     max(padded_tokens, 32) x page-table width in tokens (the plain-jnp reference
                    attention gathers each token's whole padded page table: the CPU path)
    bucket_<b>      1 when the step pads to token bucket b (between two buckets or past the last:
                    linear weights on the nearest two), so the "padded table" candidate fits one time per
                    bucket of the profiled engine: a table
                    of the measured step times, where a line through them cannot follow the step's
                    memory-to-compute crossover (8B on an H200: ~4.5 ms to 256 tokens, then ~20 us a token)

Coefficients are fitted by non-negative least squares on relative error (each row divided by its
measured time), so 5 ms and 500 ms steps count alike; `fit_linear` returns the fit and its error.

A fitted profile's wall cost is the steady (overlapped) period of a step: with a step in flight the
host prepares the next one while the device runs. A step dispatched to an idle engine (nothing in
flight) pays that host work in series; `LinearCost.idle_start` (seconds, 0 in old profiles) is the
extra the simulator adds then. `fit_profile` fits the steady model on the points not dispatched to
an idle engine (`idle_start_flags`), drops stalls, and takes idle_start from the idle-phase points.
The simulator calls a cost as `cost(batch, start) -> seconds`; `ReplayCost` returns recorded end
times instead (exact replay of a recorded run). Host only: numpy, no JAX.
"""
from __future__ import annotations

import bisect
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from jaxsgl.scheduler.batch import ScheduledBatch

FEATURES = ("tokens", "prefill_tokens", "seqs", "decode_seqs", "decode_ctx", "prefill_attn",
            "padded_tokens", "padded_seqs", "padded_attn")
PADDED_TABLE = "padded_table"  # in a candidate: one bucket_<b> feature per token bucket of the padding
# Candidate feature sets step_profile.py fits (the lowest cross-validated error wins).
CANDIDATE_FEATURES: dict[str, tuple[str, ...]] = {
    "tokens+attn": ("tokens", "decode_ctx", "prefill_attn"),
    "tokens+seqs+attn": ("tokens", "seqs", "decode_ctx", "prefill_attn"),
    "padded": ("padded_tokens", "decode_ctx", "prefill_attn"),
    "padded+ref_attn": ("padded_tokens", "padded_attn"),
    "padded_table": (PADDED_TABLE, "decode_ctx", "prefill_attn"),
}


class StepCost(Protocol):
    """What the simulator needs: the duration (s) of a step dispatched at `start` (s)."""

    def __call__(self, batch: ScheduledBatch, start: float) -> float: ...


@dataclass
class Padding:
    """The engine's bucket sizes (StepInputBuilder); sizes past the last bucket double."""
    token_buckets: list[int] = field(default_factory=lambda: [16])
    seq_buckets: list[int] = field(default_factory=lambda: [1])
    page_buckets: list[int] = field(default_factory=lambda: [1])
    page_size: int = 16

    @staticmethod
    def fit(buckets: Sequence[int], n: int) -> int:
        i = bisect.bisect_left(buckets, n)
        if i < len(buckets):
            return buckets[i]
        b = buckets[-1]
        while b < n:
            b *= 2
        return b


def step_features(seqs: Iterable[tuple[int, int, bool]], padding: Padding | None = None) -> dict[str, float]:
    """Features (FEATURES) of a step given (num_new, cached_len, is_prefill) per sequence."""
    f = dict.fromkeys(FEATURES, 0.0)
    max_kv = 0
    for num_new, cached, is_prefill in seqs:
        f["tokens"] += num_new
        f["seqs"] += 1
        max_kv = max(max_kv, cached + num_new)
        if is_prefill:
            f["prefill_tokens"] += num_new
            f["prefill_attn"] += num_new * (cached + (num_new + 1) / 2)
        else:
            f["decode_seqs"] += 1
            f["decode_ctx"] += cached + num_new
    pad = padding or Padding()
    f["padded_tokens"] = float(pad.fit(pad.token_buckets, max(int(f["tokens"]), 1))) if padding else f["tokens"]
    f["padded_seqs"] = float(pad.fit(pad.seq_buckets, max(int(f["seqs"]), 1))) if padding else f["seqs"]
    pages = -(-max_kv // pad.page_size)
    width = pad.fit(pad.page_buckets, max(pages, 1)) * pad.page_size if padding else max_kv
    f["padded_attn"] = max(f["padded_tokens"], 32.0) * width
    if padding:
        f.update(bucket_weights(f["padded_tokens"], padding.token_buckets))
    return f


def bucket_weights(padded: float, buckets: Sequence[int]) -> dict[str, float]:
    """The bucket_<b> features of a step padded to `padded` tokens (see the module docstring). A size
    between two buckets (a simulated engine whose buckets differ from the profiled one's) or past the
    last gets linear weights on the two nearest: the measured table, read as a piecewise-linear curve."""
    buckets = sorted(buckets)
    out = {f"bucket_{b}": 0.0 for b in buckets}
    if padded in buckets or len(buckets) < 2 or padded < buckets[0]:
        out[f"bucket_{min(buckets, key=lambda b: abs(b - padded))}"] = 1.0
        return out
    i = min(bisect.bisect_left(buckets, padded), len(buckets) - 1)  # past the last: extend the last segment
    lo, hi = buckets[i - 1], buckets[i]
    t = (padded - lo) / (hi - lo)
    out[f"bucket_{lo}"], out[f"bucket_{hi}"] = 1.0 - t, t
    return out


def batch_features(batch: ScheduledBatch, padding: Padding | None = None) -> dict[str, float]:
    """step_features of a ScheduledBatch (reads only)."""
    return step_features(((s.num_new, s.cached_len, s.is_prefill) for s in batch.seqs), padding)


@dataclass
class LinearCost:
    """step_time = intercept + sum(coef[f] * features[f]); a StepCost. idle_start: seconds the
    simulator adds to a step dispatched with nothing in flight (the host work overlap hides)."""
    coef: dict[str, float]
    intercept: float = 0.0
    padding: Padding | None = None
    fit: dict[str, Any] = field(default_factory=dict)  # error of the fit (fit_linear), for reports
    idle_start: float = 0.0

    def predict(self, feats: Mapping[str, float]) -> float:
        """The step time of a step's features. Its bucket_<b> weights are read again from padded_tokens
        over this profile's buckets: `padding` may be a simulated engine's, with other buckets."""
        if self._bucket_basis:
            feats = {**feats, **bucket_weights(feats["padded_tokens"], self._bucket_basis)}
        return self.intercept + sum(c * feats[f] for f, c in self.coef.items())

    @functools.cached_property
    def _bucket_basis(self) -> list[int]:
        """The token buckets of this profile's bucket_<b> coefficients (empty for a line); computed once."""
        return sorted(int(f[len("bucket_"):]) for f in self.coef if f.startswith("bucket_"))

    def with_padding(self, padding: Padding) -> LinearCost:
        """This cost with the steps padded to another engine's buckets (the fitted coefficients kept)."""
        return replace(self, padding=padding)

    def __call__(self, batch: ScheduledBatch, start: float = 0.0) -> float:
        return self.predict(batch_features(batch, self.padding))

    def to_dict(self) -> dict[str, Any]:
        return {"intercept": self.intercept, "coef": dict(self.coef), "idle_start": self.idle_start,
                "fit": dict(self.fit), "padding": asdict(self.padding) if self.padding else None}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LinearCost:
        pad = d.get("padding")
        return cls(dict(d["coef"]), float(d.get("intercept", 0.0)), Padding(**pad) if pad else None,
                   dict(d.get("fit", {})), float(d.get("idle_start", 0.0)))


def load_profile(path: str | os.PathLike | Mapping[str, Any], target: str = "wall") -> LinearCost:
    """The fitted cost of a step profile JSON (benchmarks/step_profile.py); target 'wall' is the
    engine loop's time per step (what the simulated clock needs), 'device' ModelRunner.run alone."""
    prof = path if isinstance(path, Mapping) else json.loads(open(path, encoding="utf-8").read())
    cost = LinearCost.from_dict(prof["cost"][target])
    if cost.padding is None and prof.get("padding"):
        cost.padding = Padding(**prof["padding"])
    return cost


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 by dropping the most negative coefficient until none is left."""
    active = list(range(a.shape[1]))
    while True:
        x = np.zeros(a.shape[1])
        if active:
            x[active] = np.linalg.lstsq(a[:, active], b, rcond=None)[0]
        neg = [j for j in active if x[j] < 0]
        if not neg:
            return x
        active.remove(min(neg, key=lambda j: x[j]))


def fit_linear(points: Sequence[Mapping[str, float]], times: Sequence[float], features: Sequence[str], *,
               padding: Padding | None = None, folds: int = 5, seed: int = 0) -> LinearCost:
    """Fit intercept + coef . features to `times` (NNLS on relative error). The returned cost's
    `fit` holds: n, mape / max_ape / p90_ape (in-sample absolute percentage errors, fractions)
    and cv_mape (k-fold cross-validated mape)."""
    y = np.asarray(times, float)
    if len(y) < len(features) + 1:
        raise ValueError(f"{len(y)} points cannot fit {len(features) + 1} coefficients")
    x = np.column_stack([np.ones(len(y))] + [[p[f] for p in points] for f in features])
    w = 1.0 / y
    sol = _nnls(x * w[:, None], np.ones(len(y)))
    ape = np.abs(x @ sol - y) / y
    cv = np.zeros(len(y))
    idx = np.random.default_rng(seed).permutation(len(y))
    for k in range(min(folds, len(y))):
        test = idx[k::min(folds, len(y))]
        train = np.setdiff1d(idx, test)
        s = _nnls(x[train] * w[train, None], np.ones(len(train)))
        cv[test] = np.abs(x[test] @ s - y[test]) / y[test]
    fit = {"n": int(len(y)), "mape": float(ape.mean()), "p90_ape": float(np.quantile(ape, 0.9)),
           "max_ape": float(ape.max()), "cv_mape": float(cv.mean()), "features": list(features)}
    return LinearCost({f: float(c) for f, c in zip(features, sol[1:])}, float(sol[0]), padding, fit)


def fit_best(points: Sequence[Mapping[str, float]], times: Sequence[float],
             candidates: Mapping[str, Sequence[str]] = CANDIDATE_FEATURES, *,
             padding: Padding | None = None) -> tuple[str, LinearCost, dict[str, dict]]:
    """fit_linear every candidate feature set; returns (name, cost) of the lowest cv_mape and every fit.
    A candidate with PADDED_TABLE needs the padding, and two points in each of its token buckets."""
    points = with_bucket_features(points, padding)
    buckets = padding.token_buckets if padding else []
    counts = {b: sum(1 for p in points if p.get(f"bucket_{b}") == 1.0) for b in buckets}
    fits = {}
    for name, feats in candidates.items():
        if PADDED_TABLE in feats:
            if not counts or min(counts.values()) < 2:
                continue
            feats = tuple(f"bucket_{b}" for b in buckets) + tuple(f for f in feats if f != PADDED_TABLE)
        if len(times) > len(feats) + 1:
            fits[name] = fit_linear(points, times, feats, padding=padding)
    best = min(fits, key=lambda n: fits[n].fit["cv_mape"])
    return best, fits[best], {n: c.to_dict() for n, c in fits.items()}


def with_bucket_features(points: Sequence[Mapping[str, Any]], padding: Padding | None) -> list[dict]:
    """Profile points with their bucket_<b> features (from padded_tokens; recorded points lack them)."""
    if padding is None:
        return [dict(p) for p in points]
    return [{**p, **bucket_weights(p["padded_tokens"], padding.token_buckets)} for p in points]


def idle_start_flags(points: Sequence[Mapping[str, Any]]) -> list[bool]:
    """Whether each step-profile point was dispatched to an idle engine: its `idle` flag, else (older
    profiles) whether it is the first point of its configuration."""
    out, prev = [], None
    for p in points:
        out.append(bool(p["idle"]) if "idle" in p else p.get("config") != prev)
        prev = p.get("config")
    return out


def fit_profile(points: Sequence[Mapping[str, Any]], target: str = "wall", *, padding: Padding | None = None,
                stall: float = 2.0) -> tuple[str, LinearCost, dict[str, dict]]:
    """fit_best of a step profile's points for `target`. For 'wall': the steady model is fitted on
    the points not dispatched to an idle engine, refitted without stalls (points over `stall` x its
    prediction: hiccups, not step costs), and idle_start = the median excess of the idle-phase points
    (config 'idle:...', serving-like: one request to an idle, warm engine) over it, at least 0. The
    configurations' first steps are reported (fit['idle_config_starts_median']) but not used: they
    also carry a batch's admission and the first run of a new shape. 'device': every point, as before."""
    points = with_bucket_features(points, padding)
    pts = [p for p in points if p.get(target) is not None and p[target] > 0]
    if target != "wall":
        return fit_best(pts, [p[target] for p in pts], padding=padding)
    flags = idle_start_flags(points)
    idle = [p for p, f in zip(points, flags) if f and p.get(target) is not None and p[target] > 0]
    steady = [p for p, f in zip(points, flags) if not f and p.get(target) is not None and p[target] > 0]
    if len(steady) < 8:  # too few pipelined steps (a smoke run): fit every point, as older profiles did
        steady, idle = pts, []
    best, cost, fits = fit_best(steady, [p["wall"] for p in steady], padding=padding)
    kept = [p for p in steady if p["wall"] <= stall * cost.predict(p)]
    if len(kept) < len(steady):
        best, cost, fits = fit_best(kept, [p["wall"] for p in kept], padding=padding)
    excess = lambda ps: [p["wall"] - cost.predict(p) for p in ps]
    phase = excess([p for p in idle if str(p.get("config", "")).startswith("idle:")])
    starts = excess([p for p in idle if _batch_of(p) == 1 and not str(p.get("config", "")).startswith("idle:")])
    cost.idle_start = max(float(np.median(phase)), 0.0) if phase else 0.0
    cost.fit.update(stalls_dropped=len(steady) - len(kept), idle_points=len(phase),
                    idle_config_starts_median=float(np.median(starts)) if starts else None)
    return best, cost, fits


def trace_features(row: Mapping[str, Any]) -> dict[str, float] | None:
    """FEATURES of a recorded engine step (a fidelity run's step table row: its counts plus decode_ctx,
    prefill_attn and the padded_* columns), or None where the run did not record them."""
    if row.get("decode_ctx") is None:
        return None
    return {"tokens": row["new_tokens"], "prefill_tokens": row["prefill_tokens"], "seqs": row["num_seqs"],
            "decode_seqs": row["num_decode_seqs"], **{f: row[f] for f in FEATURES[4:]}}


def step_model_error(rows: Sequence[Mapping[str, Any]], cost: LinearCost) -> dict[str, float | int | None]:
    """How a cost model predicts a recorded run's own pipelined steps (in step order, each with `end`, `idle`
    and trace_features' columns): the median of predicted / measured - 1 (bias) and the mean |.| (mape) over
    the steps dispatched while another was in flight, whose measured time is end - the previous step's end."""
    errs, prev_end = [], None
    for r in rows:
        feats = trace_features(r)
        if feats is not None and prev_end is not None and not r["idle"] and r["end"] is not None:
            wall = r["end"] - prev_end
            if wall > 0:
                errs.append(cost.predict(feats) / wall - 1.0)
        prev_end = r["end"] if r["end"] is not None else prev_end
    if not errs:
        return {"steps": 0, "bias": None, "mape": None}
    return {"steps": len(errs), "bias": float(np.median(errs)), "mape": float(np.mean(np.abs(errs)))}


def _batch_of(point: Mapping[str, Any]) -> int | None:
    """B of a profile point's configuration 'kind:BxL' (None if it has no such name)."""
    try:
        return int(str(point["config"]).split(":", 1)[1].lower().split("x")[0])
    except (KeyError, IndexError, ValueError):
        return None


@dataclass
class ReplayCost:
    """Replays a recorded run: step k ends at end_times[k] (same clock as the arrivals).
    A step the recording lacks raises KeyError (the simulation diverged from the run)."""
    end_times: Mapping[int, float]

    def __call__(self, batch: ScheduledBatch, start: float) -> float:
        return max(self.end_times[batch.step] - start, 0.0)


@dataclass
class ConstantCost:
    """Every step takes `seconds` (step counts as time; useful in tests)."""
    seconds: float = 1.0

    def __call__(self, batch: ScheduledBatch, start: float = 0.0) -> float:
        return self.seconds
