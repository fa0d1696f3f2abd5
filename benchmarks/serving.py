"""Serving benchmark: SGLang's bench_serving against a jaxsgl server, next to the in-process Engine.

    python benchmarks/serving.py --smoke --out /tmp/s.json                       # tiny model, CPU, ~1 min
    python benchmarks/serving.py --model benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --server-args "--max-running-requests 256" --num-prompts 256 --input-len 1024 --output-len 256 \\
        --rates 1 4 16 inf --datasets random sharegpt --out benchmarks/results/serving-h200.json

For each dataset and request rate it runs `sglang.bench_serving --backend sglang` (through
tests/server/run_bench_serving.py, which stubs two server-side imports of the client) and records
output tok/s, TTFT and ITL p50/p99 (after one untimed pass per dataset at rate inf, which compiles
the batch shapes, as the in-process run's first pass does). Then it stops the server and runs the same shapes through
Engine.generate in this process (random: the same lengths; sharegpt: the same prompts, tokenized) and
reports the server's output throughput at rate inf as a fraction of the in-process one.
On a CPU the numbers are dominated by compiles of batch shapes the warm pass did not meet; pass
`--server-args "--warmup"` to compile every bucket before serving.
Datasets: random (random-ids, fixed --input-len/--output-len) and sharegpt (the 2-turn ShareGPT sample
in ../shared/data/sharegpt: real prompts and reply lengths).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "server"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port, launch, stop, wait_healthy  # noqa: E402

BENCH = ROOT / "tests" / "server" / "run_bench_serving.py"
SHAREGPT = ROOT.parent / "shared" / "data" / "sharegpt" / "sharegpt_sample_50_2turn.json"
KEYS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
        "completed", "total_input_tokens", "total_output_tokens", "duration")


def bench(url: str, dataset: str, rate: str, args: argparse.Namespace, out: Path) -> dict:
    """One bench_serving run; returns the KEYS of its JSON record."""
    cmd = [sys.executable, str(BENCH), "--backend", "sglang", "--base-url", url, "--request-rate", rate,
           "--num-prompts", str(args.num_prompts), "--output-file", str(out), "--disable-tqdm", "--seed", "1",
           "--warmup-requests", "2", "--flush-cache"]
    if dataset == "random":
        cmd += ["--dataset-name", "random-ids", "--random-input-len", str(args.input_len), "--random-output-len",
                str(args.output_len), "--random-range-ratio", "1.0"]
    else:
        cmd += ["--dataset-name", "sharegpt", "--dataset-path", str(SHAREGPT)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    rec = json.loads(out.read_text().splitlines()[-1])
    return {k: rec.get(k) for k in KEYS}


def sharegpt_rows(tokenizer, n: int) -> list[tuple[list[int], int]]:
    """The first n (prompt ids, reply length) pairs of the 2-turn sample, as bench_serving reads them."""
    rows = []
    for conv in json.loads(SHAREGPT.read_text()):
        turns = conv.get("conversations") or []
        if len(turns) >= 2:
            p, r = tokenizer.encode(turns[0]["value"]), tokenizer.encode(turns[1]["value"])
            if len(p) >= 4 and len(r) >= 4:
                rows.append((p, len(r)))
    return rows[:n]


def in_process(args: argparse.Namespace, engine_kwargs: dict, datasets: list[str]) -> dict:
    """Output tok/s of Engine.generate on each dataset's shapes (second of two passes)."""
    from jaxsgl.engine.engine import Engine

    eng = Engine(args.model, **engine_kwargs)
    rng = np.random.default_rng(1)
    out = {}
    try:
        for name in datasets:
            if name == "random":
                rows = [(rng.integers(10, eng.cfg.vocab_size - 10, args.input_len).tolist(), args.output_len)
                        for _ in range(args.num_prompts)]
            else:
                rows = sharegpt_rows(eng.tokenizer, args.num_prompts)
            ids = [r[0] for r in rows]
            sps = [{"max_new_tokens": r[1], "temperature": 0, "ignore_eos": True} for r in rows]
            for _ in range(2):
                eng.flush_cache()
                t0 = time.perf_counter()
                res = eng.generate(input_ids=ids, sampling_params=sps)
                dt = time.perf_counter() - t0
            toks = sum(r["meta_info"]["completion_tokens"] for r in res)
            out[name] = {"output_throughput": toks / dt, "duration": dt, "total_output_tokens": toks}
    finally:
        eng.shutdown()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--load-format", default="auto")
    p.add_argument("--server-args", default="", help="more jaxsgl.launch_server flags (one string)")
    p.add_argument("--datasets", nargs="+", default=["random", "sharegpt"], choices=["random", "sharegpt"])
    p.add_argument("--rates", nargs="+", default=["1", "4", "16", "inf"])
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--smoke", action="store_true", help="tiny dummy model, few prompts, rate inf")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        from _common import tiny_model_dir

        args.model, args.load_format = str(tiny_model_dir(with_tokenizer=True)), "dummy"
        args.num_prompts, args.input_len, args.output_len, args.rates = 8, 32, 8, ["inf"]
    extra = shlex.split(args.server_args)
    flags = ["--load-format", args.load_format, *extra] + (["--model-path", args.model] if args.model else [])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="jaxsgl-serving-"))
    proc = launch(["--port", str(port), *flags], log=tmp / "server.log")
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "server": {}, "in_process": {}}
    try:
        wait_healthy(url, 1800, proc)
        for ds in args.datasets:
            bench(url, ds, "inf", args, tmp / f"{ds}-warm.jsonl")  # untimed: compiles what the batches need
            for rate in args.rates:
                rec = bench(url, ds, rate, args, tmp / f"{ds}-{rate}.jsonl")
                results["server"][f"{ds}@{rate}"] = rec
                print(f"{ds:9s} rate {rate:>4s}: {rec['output_throughput']:9.1f} out tok/s  TTFT p50/p99 "
                      f"{rec['median_ttft_ms']:8.1f}/{rec['p99_ttft_ms']:8.1f} ms  ITL p50/p99 "
                      f"{rec['median_itl_ms']:6.1f}/{rec['p99_itl_ms']:6.1f} ms", flush=True)
    finally:
        stop(proc)
    kw = {"load_format": args.load_format}
    parsed = {}
    if extra:
        from jaxsgl.server.launch import build_parser

        ns = build_parser().parse_args(extra)
        defaults = build_parser().parse_args([])
        parsed = {k: v for k, v in vars(ns).items() if v != getattr(defaults, k) and k in _engine_fields()}
    results["in_process"] = in_process(args, {**kw, **parsed}, args.datasets)
    for ds, rec in results["in_process"].items():
        served = results["server"].get(f"{ds}@inf")
        ratio = served["output_throughput"] / rec["output_throughput"] if served else float("nan")
        rec["server_over_in_process"] = ratio
        print(f"{ds:9s} in-process: {rec['output_throughput']:9.1f} out tok/s; server at rate inf = {ratio:.1%}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


def _engine_fields() -> set[str]:
    import dataclasses

    from jaxsgl.engine.options import EngineOptions

    return {f.name for f in dataclasses.fields(EngineOptions)} - {"model_path", "load_format"}


if __name__ == "__main__":
    main()
