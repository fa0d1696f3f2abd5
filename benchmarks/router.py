"""SGLang's router (`sglang-router`, cache-aware) in front of several jaxsgl servers, against round-robin.

    python benchmarks/router.py --out /tmp/router.json                  # tiny model, 2 workers, CPU
    python benchmarks/router.py --model PATH --workers 4 --groups 32 --per-group 16 --system-len 1024

Starts --workers jaxsgl servers, then for each policy a router in front of them
(`python -m sglang_router.launch_router --worker-urls ... --policy cache_aware|round_robin`), flushes
every worker's cache and sends a shared-prefix workload (--groups system prompts, --per-group questions
each, shuffled) with --concurrency requests in flight (after one untimed pass of the workload on
every worker, which compiles the batch shapes). Reports the prefix-cache hit rate summed over the
workers (from their /metrics: cached / prompt tokens) and the throughput.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))

from harness import PYTHON, free_port, launch, stop, wait_healthy  # noqa: E402

WORDS = "alpha beta gamma delta river mountain signal harbor lantern copper orbit meadow violet ember".split()


def workload(groups: int, per_group: int, system_words: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    prompts = []
    for g in range(groups):
        system = f"System {g}: " + " ".join(rng.choice(WORDS) for _ in range(system_words))
        prompts += [f"{system}\nQuestion {q}: what comes next?" for q in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def counters(urls: list[str]) -> dict[str, float]:
    """prompt / cached / generated token totals summed over the workers' /metrics."""
    out = {"prompt": 0.0, "cached": 0.0, "generated": 0.0}
    names = {"sglang:prompt_tokens_total": "prompt", "sglang:cached_tokens_total": "cached",
             "sglang:generation_tokens_total": "generated"}
    for url in urls:
        for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
            name = line.split("{")[0]
            if name in names:
                out[names[name]] += float(line.rsplit(" ", 1)[1])
    return out


async def drive(url: str, prompts: list[str], max_new: int, concurrency: int) -> float:
    sem = asyncio.Semaphore(concurrency)
    body = {"sampling_params": {"max_new_tokens": max_new, "temperature": 0, "ignore_eos": True}}
    async with httpx.AsyncClient(timeout=600, headers={"Content-Type": "application/json"}) as client:
        async def one(p: str) -> None:
            async with sem:
                r = await client.post(url + "/generate", json={"text": p, **body})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in prompts))
        return time.perf_counter() - t0


def run_policy(policy: str, workers: list[str], prompts: list[str], args: argparse.Namespace, log: Path) -> dict:
    port = free_port()
    router = subprocess.Popen([PYTHON, "-m", "sglang_router.launch_router", "--host", "127.0.0.1", "--port",
                               str(port), "--worker-urls", *workers, "--policy", policy, "--prometheus-port",
                               str(free_port())], stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, 120, router)
        for w in workers:
            httpx.post(w + "/flush_cache", timeout=60)
        time.sleep(1)
        before = counters(workers)
        dt = asyncio.run(drive(url, prompts, args.max_new_tokens, args.concurrency))
        after = counters(workers)
    finally:
        stop(router, 30)
    d = {k: after[k] - before[k] for k in after}
    return {"policy": policy, "hit_rate": d["cached"] / d["prompt"] if d["prompt"] else 0.0, "seconds": dt,
            "requests_per_s": len(prompts) / dt, "output_tok_per_s": d["generated"] / dt,
            "prompt_tokens": d["prompt"], "cached_tokens": d["cached"]}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: a tiny random Llama with SmolLM2's tokenizer")
    p.add_argument("--server-args", nargs=argparse.REMAINDER, default=[], help="more launch_server flags (last)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--policies", nargs="+", default=["cache_aware", "round_robin"])
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--system-words", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="jaxsgl-router-"))
    model = args.model
    extra = list(args.server_args)
    if model is None:
        from harness import make_tiny_model

        from jaxsgl.model.resolve import resolve_model_dir

        model = str(make_tiny_model(tmp / "tiny", resolve_model_dir(None)))
        extra = ["--dtype", "float32", "--max-total-tokens", "16384", *extra]
    ports = [free_port() for _ in range(args.workers)]
    procs = [launch(["--model-path", model, "--port", str(pt), *extra], log=tmp / f"worker{i}.log")
             for i, pt in enumerate(ports)]
    workers = [f"http://127.0.0.1:{pt}" for pt in ports]
    prompts = workload(args.groups, args.per_group, args.system_words, seed=0)
    results = {"args": {k: str(v) for k, v in vars(args).items()}, "runs": []}
    try:
        for w, proc in zip(workers, procs):
            wait_healthy(w, 600, proc)
            asyncio.run(drive(w, prompts, args.max_new_tokens, args.concurrency))  # untimed: compiles the shapes
        for policy in args.policies:
            rec = run_policy(policy, workers, prompts, args, tmp / f"router-{policy}.log")
            results["runs"].append(rec)
            print(f"{policy:12s} hit rate {rec['hit_rate']:6.1%}  {rec['requests_per_s']:7.2f} req/s  "
                  f"{rec['output_tok_per_s']:8.1f} out tok/s  ({rec['seconds']:.1f}s)", flush=True)
    finally:
        for proc in procs:
            stop(proc)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
