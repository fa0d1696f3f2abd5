"""Eviction x scheduling policy ablation: drive jaxsgl's Scheduler with the MockModel (host only).

    from experiments import policy_ablation as pa
    tok = pa.default_tokenize()
    wl = pa.mmlu_workload(tok, num_subjects=8, per_subject=10)
    rows, traces = pa.run_grid([wl], evictions=["lru", "lfu"], schedules=["fcfs", "lpm"], pool_fracs=[0.25, 1.0])
    pd.DataFrame(rows)

simulate() runs one workload under one (eviction, schedule, pool size) and returns a flat metrics
row plus the scheduler's per-step trace; engine_check() replays a few requests through the real
jaxsgl.Engine and compares its cache_stats() with simulate() under the same options.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from jaxsgl.scheduler import Req, Scheduler, StepInputBuilder
from jaxsgl.scheduler.mock_model import MockModel

from experiments.workloads import (Request, Workload, agents_workload, data_dir, default_tokenize, mmlu_workload,
                                   optimal_cached_tokens, output_lengths, react_workload, synthetic_workload,
                                   unique_prompt_tokens)

__all__ = ["Request", "Workload", "SimResult", "simulate", "run_grid", "pool_tokens_for", "engine_check",
           "mmlu_workload", "react_workload", "agents_workload", "synthetic_workload", "data_dir",
           "default_tokenize", "optimal_cached_tokens", "output_lengths", "unique_prompt_tokens",
           "EVICTION_POLICIES", "SCHEDULE_POLICIES", "ENGINE_DEFAULTS"]

EVICTION_POLICIES = ["lru", "lfu", "fifo", "mru", "priority"]
SCHEDULE_POLICIES = ["fcfs", "lpm", "dfs-weight", "random", "lof"]
# The Engine's scheduler settings (jaxsgl/engine/options.py), so simulate() and the engine agree.
ENGINE_DEFAULTS: dict = {"chunked_prefill_size": 512, "max_prefill_tokens": 4096, "max_running_requests": 64,
                         "max_wait_steps": 1000, "enable_prefix_dedup": True}


@dataclass
class SimResult:
    """row: flat metrics (one DataFrame row); trace: scheduler.trace_records(); waits: rid -> steps queued."""
    row: dict
    trace: list[dict] = field(repr=False)
    waits: dict[str, int] = field(repr=False)


def pool_tokens_for(workload: Workload, frac: float, page_size: int = 16) -> int:
    """KV pool size for `frac` x the workload's unique prompt tokens, in whole pages, raised to the
    least pool that admits its largest request with decode headroom (2 pages spare)."""
    want = -(-int(frac * workload.unique_tokens()) // page_size)
    least = -(-workload.max_request_tokens // page_size) + 2
    return max(want, least) * page_size


def simulate(workload: Workload, *, eviction: str = "lru", schedule: str = "fcfs", pool_tokens: int | None = None,
             pool_frac: float | None = None, page_size: int = 16, arrival_rate: float | str | None = "workload",
             seed: int = 0, check: bool = False, max_steps: int = 1_000_000, **sched_options: object) -> SimResult:
    """Run `workload` through Scheduler + MockModel until every request has finished.

    Pool: pool_tokens, or pool_frac x unique prompt tokens (pool_tokens_for); default unlimited
    (room for every prompt and output at once). Requests with `after` arrive when that request
    finishes; the others arrive at `arrival_rate` per step ("workload": the workload's own;
    None = all at once). A request finishes after exactly max_new_tokens outputs. sched_options override
    ENGINE_DEFAULTS (any SchedulerConfig field). check=True asserts scheduler integrity and KV
    contents every step (slower).
    """
    rate = workload.arrival_rate if arrival_rate == "workload" else arrival_rate
    if pool_tokens is None:
        pool_tokens = (pool_tokens_for(workload, pool_frac, page_size) if pool_frac is not None else
                       sum(len(r.prompt_ids) + r.max_new_tokens + page_size for r in workload.requests))
    num_pages = -(-pool_tokens // page_size)
    options = {**ENGINE_DEFAULTS, **sched_options}
    sched = Scheduler.create(num_pages, page_size, eviction_policy=eviction, schedule_policy=schedule,
                             random_seed=seed, **options)
    cfg = sched.config
    model = MockModel(num_pages, page_size)
    builder = StepInputBuilder.for_limits(page_size, max_tokens=cfg.prefill_budget + cfg.max_running_requests,
                                          max_seqs=cfg.max_running_requests,
                                          max_context_len=workload.max_request_tokens + page_size)
    roots = [r for r in workload.requests if r.after is None]
    children: dict[str, list[Request]] = {}
    for r in workload.requests:
        if r.after is not None:
            children.setdefault(r.after, []).append(r)
    arrived: dict[str, int] = {}
    live: dict[str, Req] = {}
    n_roots = 0
    t0 = time.perf_counter()

    def arrive(r: Request) -> None:
        live[r.rid] = sched.add_request(Req(r.rid, list(r.prompt_ids), max_new_tokens=r.max_new_tokens))
        arrived[r.rid] = sched.step

    while n_roots < len(roots) or sched.has_work():
        due = len(roots) if rate is None else int((sched.step + 1) * rate)
        if not sched.has_work():
            due = max(due, n_roots + 1)  # idle: fast-forward to the next arrival
        while n_roots < min(due, len(roots)):
            arrive(roots[n_roots])
            n_roots += 1
        if sched.step >= max_steps:
            raise RuntimeError(f"no progress after {max_steps} steps")
        batch = sched.schedule()
        if not batch:
            sched.process_results(batch, [])
            continue
        next_ids = model.step(builder.build(batch), batch if check else None)
        for req in sched.process_results(batch, next_ids):
            if len(req.output_ids) >= req.max_new_tokens:
                sched.finish(req, "length")
                for child in children.get(req.rid, ()):
                    arrive(child)
        if check:
            sched.check_integrity()
    waits = {rid: live[rid].first_admit_step - arrived[rid] - 1 for rid in live}  # type: ignore[operator]
    trace = sched.trace_records()
    st = sched.stats
    row = {
        "workload": workload.name, "eviction": eviction, "schedule": schedule, "pool_frac": pool_frac,
        "pool_tokens": num_pages * page_size, "pool_ratio": num_pages * page_size / workload.unique_tokens(),
        "page_size": page_size, "requests": len(workload.requests),
        "hit_rate": st.hit_rate, "optimal_hit_rate": workload.optimal_hit_rate(page_size),
        "prompt_tokens": st.prompt_tokens, "cached_tokens": st.cached_prompt_tokens,
        "prefill_tokens": sum(t["prefill_tokens"] for t in trace),
        "evicted_pages": sched.cache.stats.evicted_pages, "retractions": st.num_retractions, "steps": sched.step,
        "mean_wait": sum(waits.values()) / max(len(waits), 1), "max_wait": max(waits.values(), default=0),
        "wall_s": time.perf_counter() - t0,
    }
    return SimResult(row, trace, waits)


def run_grid(workloads: Iterable[Workload], *, evictions: Sequence[str] = EVICTION_POLICIES,
             schedules: Sequence[str] = SCHEDULE_POLICIES, pool_fracs: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
             page_size: int = 16, keep_traces: bool = True, **options: object) -> tuple[list[dict], dict]:
    """simulate() every (workload, eviction, schedule, pool_frac). Returns (rows, traces) where
    traces[(workload, eviction, schedule, pool_frac)] is that run's per-step trace. A frac whose pool
    is raised to the same size as a smaller frac's (pool_tokens_for) is skipped."""
    rows: list[dict] = []
    traces: dict[tuple, list[dict]] = {}
    for wl in workloads:
        seen: set[int] = set()
        for frac in pool_fracs:
            pool = pool_tokens_for(wl, frac, page_size)
            if pool in seen:  # raised to the same least pool as a smaller frac: nothing new to run
                continue
            seen.add(pool)
            for ev in evictions:
                for sp in schedules:
                    res = simulate(wl, eviction=ev, schedule=sp, pool_tokens=pool, page_size=page_size, **options)
                    res.row["pool_frac"] = frac
                    rows.append(res.row)
                    if keep_traces:
                        traces[(wl.name, ev, sp, frac)] = res.trace
    return rows, traces


def engine_check(workload: Workload, *, num_requests: int = 20, max_new_tokens: int = 4, eviction: str = "lru",
                 schedule: str = "lpm", pool_tokens: int | None = None, page_size: int = 16,
                 **options: object) -> dict:
    """Replay the first `num_requests` requests (as independent requests, `max_new_tokens` each,
    greedy, ignore_eos) through jaxsgl.Engine on the default model, all submitted at once, and
    through simulate() with the same options. `options` (e.g. max_running_requests,
    chunked_prefill_size) go to both; their names are shared by EngineOptions and SchedulerConfig.
    Returns both hit rates, prefill token counts, step counts and evicted pages."""
    from jaxsgl import Engine  # imports JAX: only here
    from jaxsgl.model.compile_cache import enable_compilation_cache

    enable_compilation_cache()  # a rerun reuses the compiled step buckets

    reqs = [Request(r.rid, r.prompt_ids, max_new_tokens) for r in workload.requests[:num_requests]]
    small = Workload(workload.name, reqs)
    if pool_tokens is None:
        pool_tokens = sum(len(r.prompt_ids) + max_new_tokens + page_size for r in reqs)
    sim = simulate(small, eviction=eviction, schedule=schedule, pool_tokens=pool_tokens, page_size=page_size,
                   arrival_rate=None, check=True, **options)
    t0 = time.perf_counter()
    with Engine(None, max_total_tokens=pool_tokens, page_size=page_size, radix_eviction_policy=eviction,
                schedule_policy=schedule, **options) as engine:
        outs = engine.generate(input_ids=[r.prompt_ids for r in reqs],
                               sampling_params={"max_new_tokens": max_new_tokens, "temperature": 0.0,
                                                "ignore_eos": True})
        stats, trace, step_s = engine.cache_stats(), engine.trace(), sum(engine.step_times)
    return {"requests": len(reqs), "pool_tokens": pool_tokens, "eviction": eviction, "schedule": schedule,
            "sim_hit_rate": sim.row["hit_rate"], "engine_hit_rate": stats["hit_rate"],
            "sim_prefill_tokens": sim.row["prefill_tokens"],
            "engine_prefill_tokens": sum(t["prefill_tokens"] for t in trace),
            "sim_steps": sim.row["steps"], "engine_steps": len(trace),
            "sim_evicted_pages": sim.row["evicted_pages"], "engine_evicted_pages": stats["evicted_pages"],
            "output_tokens": sum(len(o["output_ids"]) for o in outs),
            "engine_step_s": step_s, "engine_wall_s": time.perf_counter() - t0}
