"""The SGLang paper's workloads with the radix cache on and off: simulator and engine (paper_workloads.ipynb).

Eight workloads from ../shared/data (experiments.workloads has mmlu, react, agents, tree-of-thought and
multi-turn chat; this module adds hellaswag, llm-judge and json). Each runs offline (every root request
at t = 0, a chained call when the call it waits for finishes) with the Engine option
disable_radix_cache False and True, and reports throughput, TTFT and end-to-end latency quantiles,
hit rate and prefill tokens. The same replay runs through jaxsgl.Engine:

    python -m experiments.paper_workloads --engine --model-path .gpu/model8b --load-format dummy \\
        --out benchmarks/results/paper_workloads_llama8b_h200.json        # --size gpu (default)
    python -m experiments.paper_workloads --engine --size small --out /tmp/pw.json   # CPU, default model

Engine replay: token ids, greedy, ignore_eos, the workload's output lengths. A chained call is
submitted when its predecessor returns; where its prompt contains the predecessor's prompt + its
(synthetic) output, the engine's real output ids are put in their place, so the engine can reuse
exactly what the simulator (fed the synthetic outputs) reuses. JAX is imported only in engine_main().
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxsgl.sim import Simulator, offline, summarize

from experiments.workloads import (REPO_ROOT, Request, Tokenize, Workload, agents_workload, chat_workload,
                                   data_dir, default_tokenize, mmlu_workload, output_lengths, react_workload, tot_workload)

WORKLOADS = ["mmlu", "hellaswag", "tree-of-thought", "multi-turn-chat", "react", "agents", "llm-judge", "json"]
METRICS = ["req_per_s", "total_tok_per_s", "ttft_p50", "ttft_p99", "e2e_latency_p50", "e2e_latency_p99",
           "hit_rate", "prefill_tokens", "steps", "duration_s"]
RESULTS = REPO_ROOT / "benchmarks" / "results"
ENGINE_RESULTS = [RESULTS / "paper_workloads_llama8b_h200.json", RESULTS / "paper_workloads_smollm2_cpu.json"]

# builder keyword arguments per size preset ("full": the notebook; "fast": CI; "gpu": the 8B engine run)
SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {"mmlu": {"num_subjects": 10, "per_subject": 12}, "hellaswag": {"num_questions": 50},
             "tree-of-thought": {"num_questions": 8}, "multi-turn-chat": {"num_conversations": 24},
             "react": {"num_questions": 16}, "agents": {"num_calls": 300}, "llm-judge": {"num_articles": 25},
             "json": {"num_names": 50}},
    "fast": {"mmlu": {"num_subjects": 4, "per_subject": 5}, "hellaswag": {"num_questions": 10},
             "tree-of-thought": {"num_questions": 2}, "multi-turn-chat": {"num_conversations": 6},
             "react": {"num_questions": 3}, "agents": {"num_calls": 60}, "llm-judge": {"num_articles": 4},
             "json": {"num_names": 12}},
    "gpu": {"mmlu": {"num_subjects": 10, "per_subject": 20}, "hellaswag": {"num_questions": 50},
            "tree-of-thought": {"num_questions": 8}, "multi-turn-chat": {"num_conversations": 24},
            "react": {"num_questions": 16}, "agents": {"num_calls": 300}, "llm-judge": {"num_articles": 25},
            "json": {"num_names": 50}},
    "small": {"mmlu": {"num_subjects": 2, "per_subject": 2}, "hellaswag": {"num_questions": 2, "shots": 3},
              "tree-of-thought": {"num_questions": 1, "levels": ("Plan", "Answer"), "output_mean": 8.0},
              "multi-turn-chat": {"num_conversations": 2, "turns": 2, "max_user_tokens": 64, "output_mean": 8.0},
              "react": {"num_questions": 1, "shots": 1, "output_mean": 8.0}, "agents": {"num_calls": 8},
              "llm-judge": {"num_articles": 1, "dimensions": 2, "output_mean": 8.0, "max_article_chars": 800},
              "json": {"num_names": 4, "output_mean": 16.0}},
}


# ------------------------------------------------------------------ the three new builders
def hellaswag_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_questions: int = 50,
                       shots: int = 20, seed: int = 0) -> Workload:
    """HellaSwag as SGLang's benchmark runs it: `shots` solved examples (the file's first ones) form a
    prefix shared by every question; each question is a select() over its 4 endings: 4 requests
    (prefix + context + " " + ending) arriving together, 1 output token each (select scores the
    choices by a prefill; one token gives every request a TTFT). `group` = the question."""
    rows = [json.loads(line) for line in open(data_dir(data) / "hellaswag" / "hellaswag_val_sample1000.jsonl",
                                              encoding="utf-8")]
    prefix = "".join(f"{r['ctx']} {r['endings'][int(r['label'])]}\n\n" for r in rows[:shots])
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(np.arange(shots, len(rows)), size=min(num_questions, len(rows) - shots),
                              replace=False).tolist())
    reqs = [Request(f"hs{q}.{k}", tokenize(prefix + rows[q]["ctx"] + " " + end), 1, group=f"q{q}")
            for q in picks for k, end in enumerate(rows[q]["endings"])]
    return Workload("hellaswag", reqs, meta={"shots": shots, "questions": len(picks)})


JUDGE_SYSTEM = ("You are an experienced editor. You read an article and judge its quality on one dimension at a "
                "time. Be specific, quote the article where it helps, and keep each judgement to one paragraph.\n")
JUDGE_DIMENSIONS = [
    "Content: is the information accurate, relevant and well supported?",
    "Organization: does the article flow logically, with clear sections and transitions?",
    "Writing style: is the language clear, concise and engaging for its readers?",
    "Grammar and mechanics: are spelling, punctuation and grammar correct?",
    "Audience: is the article pitched at the right level for its intended readers?",
    "Impact: does the article leave the reader informed, persuaded or moved?",
]


def llm_judge_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_articles: int = 25,
                       dimensions: int = 6, output_mean: float = 96.0, max_article_chars: int | None = None,
                       start: int = 0, seed: int = 0) -> Workload:
    """LLM judge (branch-solve-merge, SGLang's llm_judge benchmark with our own wording): per article,
    system prompt + article is forked into `dimensions` judgement calls (arriving together), then a
    merge call (system + article + every judgement, 2 output tokens: the score) chained after the
    branch with the longest output (the last to finish). Judgements are synthetic ids in meta["outputs"].
    Articles start..start+num_articles of the file (25 in all)."""
    path = data_dir(data) / "sglang_bench" / "llm_judge_articles.jsonl"
    articles = [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()][start:start + num_articles]
    rng = np.random.default_rng(seed)
    lens = iter(output_lengths(len(articles) * dimensions, output_mean, max_len=256, seed=seed))
    reqs: list[Request] = []
    outputs: dict[str, list[int]] = {}
    for a, text in enumerate(articles):
        base = tokenize(JUDGE_SYSTEM + "\n```\n" + text[:max_article_chars] + "\n```\n\n")
        merge = list(base) + tokenize("I will judge the quality based on the following metrics.\n")
        branch_rids = []
        for d, dim in enumerate(JUDGE_DIMENSIONS[:dimensions]):
            rid = f"judge{a}.{d}"
            out = rng.integers(1000, 41_000, next(lens)).tolist()
            reqs.append(Request(rid, base + tokenize(f"USER: Please judge the article on this metric. {dim} "
                                                     "End your judgement with the word END.\nJUDGE:"),
                                len(out), group=f"a{a}"))
            outputs[rid] = out
            branch_rids.append(rid)
            merge += tokenize(dim.split(":")[0] + ": ") + out + tokenize("\n")
        merge += tokenize("In summary, on a scale of 1 to 10, I would give the article a score of")
        last = max(branch_rids, key=lambda r: len(outputs[r]))
        reqs.append(Request(f"judge{a}.merge", merge, 2, after=last, group=f"a{a}"))
    return Workload("llm-judge", reqs, meta={"outputs": outputs, "articles": len(articles)})


def json_workload(tokenize: Tokenize, data: str | os.PathLike | None = None, *, num_names: int = 50,
                  output_mean: float = 96.0, seed: int = 0) -> Workload:
    """JSON decoding (SGLang's json_jump_forward character_gen): "<name> is a character in Harry Potter.
    Please fill in the following information about this character.\\n" then a JSON object. No
    constraint is modelled: the object's tokens are plain decode steps (no jump-forward), so this
    workload has almost nothing to share and shows the cache's overhead, not its gain."""
    path = data_dir(data) / "sglang_bench" / "json_jump_forward_dataset.txt"
    names = [n.strip() for n in open(path, encoding="utf-8") if n.strip()][:num_names]
    outs = output_lengths(len(names), output_mean, sigma=0.2, max_len=256, seed=seed)
    reqs = [Request(f"json{i}", tokenize(f"{n} is a character in Harry Potter. Please fill in the following "
                                         "information about this character.\n"), o, group=f"n{i}")
            for i, (n, o) in enumerate(zip(names, outs))]
    return Workload("json", reqs, meta={"names": len(names)})


def build(name: str, tokenize: Tokenize, size: str | Mapping[str, Any] = "full",
          data: str | os.PathLike | None = None) -> Workload:
    """Workload `name` at a size preset (SIZES key) or with explicit builder keyword arguments."""
    kw = dict(SIZES[size][name] if isinstance(size, str) else size)
    builders = {"mmlu": mmlu_workload, "hellaswag": hellaswag_workload, "tree-of-thought": tot_workload,
                "multi-turn-chat": chat_workload, "react": react_workload, "agents": agents_workload,
                "llm-judge": llm_judge_workload, "json": json_workload}
    if name not in builders:
        raise ValueError(f"unknown workload {name!r}; known: {WORKLOADS}")
    return builders[name](tokenize, data, **kw)


# ------------------------------------------------------------------ simulation
def simulate_pair(wl: Workload, cost: Any, **options: Any) -> list[dict]:
    """Two rows (cache on, cache off) of one offline simulation each, with METRICS and evictions."""
    rows = []
    n_roots = sum(r.after is None for r in wl.requests)
    for cache in (True, False):
        res = Simulator(cost, disable_radix_cache=not cache, **options).run(
            wl.requests, offline(n_roots), outputs=wl.meta.get("outputs"))
        s = res.summary
        rows.append({"workload": wl.name, "cache": "on" if cache else "off", "requests": len(wl.requests),
                     **{m: s[m] for m in METRICS}, "evicted_pages": s["evicted_pages"],
                     "optimal_hit_rate": wl.optimal_hit_rate(16)})
    return rows


def speedups(rows: Sequence[Mapping[str, Any]]) -> list[dict]:
    """Per workload: cache-on / cache-off throughput and off / on latency and prefill ratios."""
    by = {(r["workload"], r["cache"]): r for r in rows}
    out = []
    for wl in dict.fromkeys(r["workload"] for r in rows):
        on, off = by[(wl, "on")], by[(wl, "off")]
        out.append({"workload": wl, "hit_rate": on["hit_rate"], "throughput_x": on["req_per_s"] / off["req_per_s"],
                    "ttft_p50_x": off["ttft_p50"] / on["ttft_p50"], "e2e_p99_x": off["e2e_latency_p99"] /
                    on["e2e_latency_p99"], "prefill_saved": 1 - on["prefill_tokens"] / off["prefill_tokens"]})
    return out


def load_engine_results(path: str | os.PathLike | None = None) -> tuple[Path | None, dict | None]:
    """(path, JSON) of engine results: `path`, else $JAXSGL_ENGINE_RESULTS, else the first of
    ENGINE_RESULTS that exists; (None, None) when there is none."""
    cands = [Path(p) for p in (path, os.environ.get("JAXSGL_ENGINE_RESULTS")) if p] or ENGINE_RESULTS
    for p in cands:
        p = p if p.is_absolute() or p.exists() else REPO_ROOT / p
        if p.exists():
            return p, json.loads(p.read_text())
    return None, None


def engine_profile(results_path: str | os.PathLike) -> Path:
    """The step profile of the machine and model that produced engine results
    `paper_workloads_<tag>.json`: benchmarks/results/step_profile_<tag>.json (simulate them with it)."""
    tag = Path(results_path).stem.removeprefix("paper_workloads_")
    return RESULTS / f"step_profile_{tag}.json"


def paired(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The rows of workloads that have both a cache-on and a cache-off row (a partial run has not)."""
    have: dict[str, set] = {}
    for r in rows:
        have.setdefault(r["workload"], set()).add(r["cache"])
    return [r for r in rows if have[r["workload"]] == {"on", "off"}]


def sim_like_engine(results: dict, cost: Any, tokenize: Tokenize, data: Any = None) -> list[dict]:
    """The simulation of the engine results' runs: same workloads, sizes and scheduler options."""
    rows = []
    for name in dict.fromkeys(r["workload"] for r in paired(results["rows"])):
        wl = build(name, tokenize, results["sizes"][name], data)
        rows += simulate_pair(wl, cost, **results["sim_options"])
    return rows


# ------------------------------------------------------------------ engine replay
def _rewrite(req: Request, by_rid: Mapping[str, Request], sent: Mapping[str, list[int]],
             outs: Mapping[str, Sequence[int]], got: Mapping[str, list[int]]) -> list[int]:
    """req's prompt with its predecessor's prompt + synthetic output replaced by what was really sent
    and generated (same lengths), when the prompt starts with them; else the prompt as built."""
    if req.after is None or req.after not in outs:
        return list(req.prompt_ids)
    parent = by_rid[req.after]
    head = list(parent.prompt_ids) + list(outs[parent.rid])
    if req.prompt_ids[:len(head)] != head or len(got[parent.rid]) != len(outs[parent.rid]):
        return list(req.prompt_ids)
    return sent[parent.rid] + got[parent.rid] + list(req.prompt_ids[len(head):])


async def _replay(engine: Any, wl: Workload, tag: str) -> None:
    """Submit every root at once and each chained call when its predecessor returns."""
    by_rid = {r.rid: r for r in wl.requests}
    children: dict[str, list[Request]] = {}
    for r in wl.requests:
        if r.after is not None:
            children.setdefault(r.after, []).append(r)
    outs = wl.meta.get("outputs", {})
    sent: dict[str, list[int]] = {}
    got: dict[str, list[int]] = {}

    async def run(r: Request) -> None:
        sent[r.rid] = _rewrite(r, by_rid, sent, outs, got)
        res = await engine.async_generate(input_ids=sent[r.rid], rid=f"{tag}-{r.rid}", sampling_params={
            "max_new_tokens": r.max_new_tokens, "temperature": 0.0, "ignore_eos": True})
        got[r.rid] = list(res["output_ids"])
        await asyncio.gather(*(run(c) for c in children.get(r.rid, ())))

    await asyncio.gather(*(run(r) for r in wl.requests if r.after is None))


def run_engine(engine: Any, wl: Workload, tag: str, warm: bool = True) -> dict:
    """Optionally an untimed pass (compiles the step shapes), flush, the timed replay; its summary."""
    if warm:
        asyncio.run(_replay(engine, wl, f"warm-{tag}"))
    engine.flush_cache()
    first_step = engine.scheduler.step + 1
    compiled = engine.runner.num_compiled()
    asyncio.run(_replay(engine, wl, tag))
    engine.wait_idle()  # the step in flight when the last request finished (overlap) completes first
    recs = [r for r in engine.request_records() if r["rid"].startswith(f"{tag}-")]
    steps = engine.scheduler.trace_records(first_step)
    return {**summarize(recs, steps), "compiled_during_run": engine.runner.num_compiled() - compiled,
            "step_trace": step_table(steps, min((r["arrival_time"] for r in recs), default=0.0))}


TRACE_COLUMNS = ("step", "num_seqs", "num_prefill_seqs", "num_admitted", "new_tokens", "cached_tokens", "end_time",
                 "step_time", "prepare_time", "dispatch_time", "wait_time", "process_time")


def step_table(steps: Sequence[Mapping[str, Any]], t0: float) -> dict:
    """A timed run's steps (TRACE_COLUMNS; end_time from the first arrival, times in ms), where its host
    phases show (the engine's prepare / dispatch / wait / process per step)."""
    ms = lambda v: None if v is None else round(v * 1e3, 3)  # noqa: E731
    rows = [[s["step"], s["num_seqs"], s["num_prefill_seqs"], s["num_admitted"], s["new_tokens"],
             s["cached_tokens"], ms(None if s.get("end_time") is None else s["end_time"] - t0),
             *(ms(s.get(k)) for k in TRACE_COLUMNS[7:])] for s in steps if s.get("num_seqs")]
    return {"columns": list(TRACE_COLUMNS), "unit": "ms", "rows": rows}


def model_tokenize(model_path: str | None) -> Tokenize:
    """encode() of the model's own tokenizer (the embedded default model's without a path)."""
    if model_path is None:
        return default_tokenize()
    from jaxsgl.tokenizer import load_tokenizer
    tok = load_tokenizer(model_path)
    return lambda text: list(tok.encode(text))


def parse_sizes(items: Sequence[str]) -> dict[str, Any]:
    """--size: a preset (SIZES key), then optional name=N items (N = the builder's first argument)."""
    preset = next((i for i in items if "=" not in i), "gpu")
    sizes: dict[str, Any] = {k: dict(v) for k, v in SIZES[preset].items()}
    for item in items:
        if "=" in item:
            name, n = item.split("=")
            first = next(iter(SIZES["full"][name]))
            sizes[name][first] = int(n)
    return sizes


def engine_main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", action="store_true", help="run the engine replay (the only mode of this CLI)")
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--workloads", nargs="+", default=WORKLOADS)
    ap.add_argument("--size", nargs="+", default=["gpu"], help="preset (small | fast | full | gpu), name=N items")
    ap.add_argument("--warm", choices=["pass", "none"], default="pass",
                    help="pass: an untimed replay first compiles the shapes it meets")
    ap.add_argument("--warmup", action="store_true",
                    help="compile every step shape when each engine starts, on all cores (Engine warmup=True; "
                         "for the GPU, where a shape met in an untimed pass compiles alone in ~8-10 s)")
    ap.add_argument("--seq-buckets", type=int, nargs="+", default=None, help="padded batch sizes (Engine option)")
    ap.add_argument("--max-total-tokens", type=int, default=None)
    ap.add_argument("--max-running-requests", type=int, default=64)
    ap.add_argument("--chunked-prefill-size", type=int, default=512)
    ap.add_argument("--out", default="paper_workloads.json")
    args = ap.parse_args(argv)
    if not args.engine:
        ap.error("pass --engine (the simulation runs in the notebook)")

    from jaxsgl.engine.engine import Engine  # JAX from here on

    sizes = parse_sizes(args.size)
    tokenize = model_tokenize(args.model_path)
    t0 = time.perf_counter()
    wls = [build(n, tokenize, sizes[n]) for n in args.workloads]
    print(f"built {len(wls)} workloads ({sum(len(w.requests) for w in wls)} requests) in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    opts = dict(max_running_requests=args.max_running_requests, chunked_prefill_size=args.chunked_prefill_size,
                max_total_tokens=args.max_total_tokens)
    engine_only = dict(seq_buckets=args.seq_buckets, warmup=args.warmup)  # (not simulator options)
    rows: list[dict] = []
    out: dict[str, Any] = {"args": vars(args), "sizes": {w.name: sizes[w.name] for w in wls},
                           "workloads": [w.summary() for w in wls], "rows": rows}
    for cache in (True, False):
        with Engine(args.model_path, load_format=args.load_format, attention_backend=args.attention_backend,
                    skip_tokenizer_init=True, disable_radix_cache=not cache, **engine_only, **opts) as eng:
            import jax
            out["device"] = str(jax.devices()[0].device_kind)
            out["sim_options"] = {**opts, "max_total_tokens": eng.scheduler.pool.capacity * eng.scheduler.page_size}
            for wl in wls:
                t = time.perf_counter()
                s = run_engine(eng, wl, f"{wl.name}-{cache}", warm=args.warm == "pass")
                row = {"workload": wl.name, "cache": "on" if cache else "off", "requests": len(wl.requests),
                       **{m: s[m] for m in METRICS}, "compiled_during_run": s["compiled_during_run"]}
                rows.append(row)
                out.setdefault("step_traces", {})[f"{wl.name}-{row['cache']}"] = s["step_trace"]
                Path(args.out).write_text(json.dumps(out, indent=1))
                print(f"[{time.perf_counter() - t0:6.1f}s] cache {row['cache']:3s} {wl.name:16s} "
                      f"({time.perf_counter() - t:5.1f}s) {row['req_per_s']:8.2f} req/s  hit {row['hit_rate']:.3f}  "
                      f"ttft p50 {row['ttft_p50']:.3f}s  compiled {row['compiled_during_run']}", flush=True)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    engine_main()
