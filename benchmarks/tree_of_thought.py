"""Tree-of-thought in the frontend language: 4 levels x fork(2), with and without the fork hint.

    python benchmarks/tree_of_thought.py                        # default model, 2 GSM8K questions, CPU-sized
    python benchmarks/tree_of_thought.py --questions 8 --max-tokens 32 --out tot.json
    python benchmarks/tree_of_thought.py --smoke --out /tmp/t.json    # tiny random model (CI), 1 question

Each question grows a binary tree (plan -> execute -> reflect -> answer): 2 + 4 + 8 + 16 = 30 gens.
Every configuration runs in a fresh Engine: as many warm-up questions first (compilation of the
same batch shapes), then flush_cache() and the measured questions. Configurations:

  hint              radix cache on; fork(n) first commits the shared prefix (max_new_tokens=0)
  no-hint           radix cache on; branches go straight to the engine (its in-batch prefix dedup still on)
  no-hint-no-dedup  as no-hint, and the scheduler's in-batch prefix de-duplication off
  hint-no-dedup     the hint alone (dedup off)
  no-cache          radix cache off (no hint: nothing could reuse it)

Reports prefill tokens computed (sum over engine steps), prompt tokens, cache hit rate and wall time,
as a table and JSON; greedy decoding, so every configuration must produce the same answers.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jaxsgl as sgl  # noqa: E402
from _common import tiny_model_dir  # noqa: E402
from jaxsgl.lang import global_config  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"
LEVELS = ("Plan", "Execution", "Reflection", "Answer")
CONFIGS: dict[str, dict[str, Any]] = {
    "hint": dict(hint=True, engine={}),
    "no-hint": dict(hint=False, engine={}),
    "no-hint-no-dedup": dict(hint=False, engine={"enable_prefix_dedup": False}),
    "hint-no-dedup": dict(hint=True, engine={"enable_prefix_dedup": False}),
    "no-cache": dict(hint=False, engine={"disable_radix_cache": True}),
}


@sgl.function
def tree_of_thought(s, question, branches=2, max_tokens=16):
    s += ("You solve grade-school math problems. Propose plans, carry them out, check them, "
          "then state the final number.\n\n")
    s += "Question: " + question + "\n"
    frontier, groups = [s], []
    for name in LEVELS:
        nxt = []
        for state in frontier:  # each fork waits for its parent's gen; siblings' gens run together
            forks = state.fork(branches)
            forks += lambda i, name=name: f"{name} {i + 1}:"
            forks += sgl.gen(name, max_tokens=max_tokens, ignore_eos=True) + "\n"
            groups.append(forks)
            nxt.extend(forks)
        frontier = nxt
    answers = [leaf[LEVELS[-1]] for leaf in frontier]
    for forks in reversed(groups):
        forks.join()
    return answers


def load_questions(n: int, offset: int = 0) -> list[str]:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[offset:offset + n]]
    return [r["question"] for r in rows]


def measure(rt: sgl.Runtime, questions: list[str], branches: int, max_tokens: int) -> dict[str, Any]:
    eng = rt.engine
    before = eng.trace()
    stats0, mark = eng.cache_stats(), (before[-1]["step"] if before else -1)
    t0 = time.perf_counter()
    states = tree_of_thought.run_batch([{"question": q, "branches": branches, "max_tokens": max_tokens}
                                        for q in questions], temperature=0, backend=rt)
    answers = [st.ret_value for st in states]
    wall = time.perf_counter() - t0
    errors = [repr(st.error()) for st in states if st.error() is not None]
    stats1, trace = eng.cache_stats(), [r for r in eng.trace() if r["step"] > mark]  # a ring buffer
    prompt = stats1["prompt_tokens"] - stats0["prompt_tokens"]
    cached = stats1["cached_prompt_tokens"] - stats0["cached_prompt_tokens"]
    return {"wall_s": round(wall, 2), "step_time_s": round(sum(r["step_time"] or 0.0 for r in trace), 2),
            "prefill_tokens_computed": sum(r["prefill_tokens"] for r in trace),
            "prompt_tokens": prompt, "cached_prompt_tokens": cached,
            "hit_rate": round(cached / prompt, 4) if prompt else 0.0,
            "requests": stats1["num_added"] - stats0["num_added"], "steps": len(trace),
            "errors": errors, "answers": answers}


def run_config(name: str, args: argparse.Namespace, questions: list[str], warmup: list[str]) -> dict[str, Any]:
    cfg = CONFIGS[name]
    global_config.enable_fork_hint = cfg["hint"]
    options = dict(cfg["engine"], **({"page_size": args.page_size} if args.page_size else {}))
    rt = sgl.Runtime(args.model, dtype=args.dtype, load_format=args.load_format, **options)
    try:
        measure(rt, warmup, args.branches, args.max_tokens)  # compile every shape first
        rt.flush_cache()
        time.sleep(0.2)
        out = measure(rt, questions, args.branches, args.max_tokens)
    finally:
        rt.shutdown()
        global_config.enable_fork_hint = True
    return {"config": name, "fork_hint": cfg["hint"], "engine_options": cfg["engine"], **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--load-format", default="auto", help="auto | dummy (random weights from a config.json)")
    ap.add_argument("--questions", type=int, default=2)
    ap.add_argument("--branches", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--page-size", type=int, default=None, help="KV page size (default: the engine's)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--smoke", action="store_true", help="tiny random model (default tokenizer), 1 question, 2 tokens, configs hint and no-cache")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.load_format = str(tiny_model_dir(with_tokenizer=True)), "dummy"
        args.questions, args.max_tokens, args.configs = 1, 2, ["hint", "no-cache"]
    questions, warmup = load_questions(args.questions), load_questions(args.questions, offset=100)
    rows = [run_config(name, args, questions, warmup) for name in args.configs]
    same = all(r["answers"] == rows[0]["answers"] for r in rows)
    print(f"\ntree of thought: {args.questions} questions x {len(LEVELS)} levels x fork({args.branches}), "
          f"{args.max_tokens} tokens per node, greedy; identical answers across configs: {same}\n")
    print("| config | prefill tokens computed | prompt tokens | cache hit rate | requests | steps | step time s "
          "| wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['config']} | {r['prefill_tokens_computed']} | {r['prompt_tokens']} | {r['hit_rate']:.1%} | "
              f"{r['requests']} | {r['steps']} | {r['step_time_s']} | {r['wall_s']} |")
    for r in rows:
        if r["errors"]:
            print(f"{r['config']}: errors {r['errors']}")
    result = {"benchmark": "tree_of_thought", "questions": args.questions, "levels": len(LEVELS),
              "branches": args.branches, "max_tokens": args.max_tokens, "model": args.model or "default",
              "dtype": args.dtype, "load_format": args.load_format, "page_size": args.page_size, "identical_answers": same,
              "rows": [{k: v for k, v in r.items() if k != "answers"} for r in rows]}
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
