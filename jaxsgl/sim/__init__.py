"""jaxsgl.sim: a serving simulator with time (host only, never imports JAX).

It drives the real Scheduler, RadixCache and policies with a fitted step-cost model in place of
the model, and exports the same per-request and per-step records as the Engine:

    from jaxsgl.sim import Simulator, load_profile, poisson
    sim = Simulator(load_profile("benchmarks/results/step_profile_smollm2_cpu.json"), max_total_tokens=8192)
    res = sim.run(requests, poisson(len(requests), rate=1.0, seed=0))
    res.request_frame()   # jaxsgl.scheduler.records.REQUEST_COLUMNS
    res.step_frame()      # Scheduler.trace_records() columns

See cost_model.py for the cost model's form, arrivals.py for arrival processes, plots.py for plots.
"""
from jaxsgl.scheduler.records import REQUEST_COLUMNS, RequestTimes, as_frame, request_records
from jaxsgl.sim.arrivals import from_trace, gamma, offline, poisson
from jaxsgl.sim.client import ChainedClient, chained_lags, load_client
from jaxsgl.sim.cost_model import (CANDIDATE_FEATURES, FEATURES, ConstantCost, LinearCost, Padding, ReplayCost,
                                   StepCost, batch_features, fit_best, fit_linear, fit_profile, load_profile,
                                   step_features, step_model_error, trace_features)
from jaxsgl.sim.metrics import summarize
from jaxsgl.sim.simulator import SimResult, SimRun, Simulator, simulate

__all__ = ["Simulator", "SimResult", "SimRun", "simulate", "StepCost", "LinearCost", "ConstantCost", "ReplayCost", "Padding",
           "FEATURES", "CANDIDATE_FEATURES", "step_features", "batch_features", "fit_linear", "fit_best", "fit_profile",
           "load_profile", "offline", "poisson", "gamma", "from_trace", "summarize", "REQUEST_COLUMNS",
           "RequestTimes", "request_records", "as_frame", "ChainedClient", "chained_lags", "load_client",
           "step_model_error", "trace_features"]
