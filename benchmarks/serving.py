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
reports the server's output throughput at rate inf as a fraction of the in-process one. Each server run also
records the server process's CPU time per output token (/proc: all threads, and the event loop's main
thread alone: server_{process,loop}_cpu_us_per_token), the host cost the HTTP layer adds to the engine's.
On a CPU the numbers are dominated by compiles of batch shapes the warm pass did not meet; pass
`--server-args "--warmup"` to compile every bucket before serving.
Datasets: random (random-ids, fixed --input-len/--output-len) and sharegpt (the 2-turn ShareGPT sample
in $JAXSGL_DATA/sharegpt, default ../shared/data/sharegpt: real prompts and reply lengths).

--client builtin (where sglang is not installed, e.g. the GPU machine) replaces bench_serving with a small
asyncio client over httpx that flushes the radix cache (as bench_serving --flush-cache), then sends the
in-process run's exact requests (token ids, ignore_eos) to
/generate with stream=True at Poisson arrivals and computes bench_serving's metrics the same way
(output tok/s = output tokens / duration; TTFT = first chunk; ITL = gaps between chunks). --client auto
uses bench_serving when sglang imports. --max-duration bounds each finite rate's request count
(rate x seconds), so rate 1 does not take num-prompts seconds.
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import math
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
SHAREGPT = Path(os.environ.get("JAXSGL_DATA") or ROOT.parent / "shared" / "data") / "sharegpt" / \
    "sharegpt_sample_50_2turn.json"
KEYS = ("output_throughput", "request_throughput", "median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms",
        "completed", "total_input_tokens", "total_output_tokens", "duration")


def server_cpu(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) the server has used so far: "process" (every thread of it and of its child
    processes: the engine's loop, XLA's, uvicorn's) and "loop" (its main thread, which runs the asyncio event loop that
    serves HTTP); None where /proc is not there (not Linux)."""
    def ticks(stat: Path) -> int:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))

    try:
        hz = os.sysconf("SC_CLK_TCK")
        out = {"process": sum(ticks(Path(f"/proc/{p}/stat")) for p in [pid, *_descendants(pid)]) / hz,
               "loop": ticks(Path(f"/proc/{pid}/task/{pid}/stat")) / hz}
    except (OSError, ValueError, IndexError):
        return None
    try:  # the main thread's on-CPU nanoseconds (clock ticks are 10 ms)
        out["loop"] = int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        pass
    return out


def _descendants(pid: int) -> list[int]:
    """The server's child processes, recursively (--engine-process runs the engine in one)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out += [int(child), *_descendants(int(child))]
    except OSError:
        pass
    return out


def cpu_per_token(before: dict | None, after: dict | None, tokens: int) -> dict:
    """The server's CPU microseconds per output token between two server_cpu() readings."""
    if before is None or after is None or not tokens:
        return {}
    return {f"server_{k}_cpu_us_per_token": (after[k] - before[k]) / tokens * 1e6 for k in ("process", "loop")}


def num_prompts(rate: str, args: argparse.Namespace) -> int:
    """The request count at `rate`: --num-prompts, at most rate x --max-duration (finite rates)."""
    r = float(rate)
    if args.max_duration and math.isfinite(r):
        return max(2, min(args.num_prompts, math.ceil(r * args.max_duration)))
    return args.num_prompts


def bench(url: str, dataset: str, rate: str, args: argparse.Namespace, out: Path) -> dict:
    """One bench_serving run; returns the KEYS of its JSON record."""
    cmd = [sys.executable, str(BENCH), "--backend", "sglang", "--base-url", url, "--request-rate", rate,
           "--num-prompts", str(num_prompts(rate, args)), "--output-file", str(out), "--disable-tqdm", "--seed", "1",
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


def builtin_bench(url: str, rows: list[tuple[list[int], int]], rate: str, seed: int = 1) -> dict:
    """bench_serving's metrics from our own client: rows (prompt ids, output length) streamed to /generate
    at Poisson arrivals of `rate` per second (all at once for inf); returns the KEYS."""
    import httpx
    import numpy as np

    httpx.post(url + "/flush_cache", timeout=60).raise_for_status()  # as bench_serving --flush-cache: the
    rng = np.random.default_rng(seed)                                  # rows repeat across runs
    r = float(rate)
    gaps = rng.exponential(1.0 / r, len(rows)) if math.isfinite(r) and r > 0 else np.zeros(len(rows))

    async def one(client: httpx.AsyncClient, ids: list[int], out_len: int, delay: float) -> dict:
        await asyncio.sleep(delay)
        body = {"input_ids": ids, "stream": True,
                "sampling_params": {"max_new_tokens": out_len, "temperature": 0, "ignore_eos": True}}
        t0 = time.perf_counter()
        times, last, buf = [], b"", b""
        async with client.stream("POST", url + "/generate", json=body) as resp:
            if resp.status_code != 200:
                return {"ok": False}
            # Each SSE event gets the time its bytes arrived (as bench_serving's per-chunk times); only the
            # last one is parsed: the client's per-token cost stays far below the server's.
            async for chunk in resp.aiter_raw():
                now = time.perf_counter()
                *events, buf = (buf + chunk).split(b"\n\n")
                for ev in events:
                    if ev.startswith(b"data:") and ev != b"data: [DONE]":
                        times.append(now)
                        last = ev
        meta = json.loads(last[5:])["meta_info"] if last else {}
        ok = bool(times) and meta.get("finish_reason") is not None
        return {"ok": ok, "ttft": times[0] - t0 if times else None, "itl": list(np.diff(times)),
                "out": meta.get("completion_tokens", 0), "in": len(ids), "cached": meta.get("cached_tokens", 0),
                "span": (meta.get("request_received_ts"), meta.get("request_finished_ts"))}

    async def run() -> tuple[list[dict], float]:
        limits = httpx.Limits(max_connections=len(rows) + 8, max_keepalive_connections=len(rows) + 8)
        async with httpx.AsyncClient(timeout=httpx.Timeout(3600, connect=60), limits=limits) as client:
            t0 = time.perf_counter()
            res = await asyncio.gather(*(one(client, ids, n, d) for (ids, n), d in zip(rows, np.cumsum(gaps))))
            return res, time.perf_counter() - t0

    cpu0 = time.process_time()
    res, duration = asyncio.run(run())
    client_cpu = time.process_time() - cpu0
    done = [x for x in res if x["ok"]]
    ttft = np.array([x["ttft"] for x in done]) * 1e3
    itl = np.array([g for x in done for g in x["itl"]] or [0.0]) * 1e3
    out_tok = sum(x["out"] for x in done)
    return {"output_throughput": out_tok / duration, "request_throughput": len(done) / duration,
            "median_ttft_ms": float(np.median(ttft)) if len(done) else None,
            "p99_ttft_ms": float(np.percentile(ttft, 99)) if len(done) else None,
            "median_itl_ms": float(np.median(itl)), "p99_itl_ms": float(np.percentile(itl, 99)),
            "completed": len(done), "total_input_tokens": sum(x["in"] for x in done),
            "total_output_tokens": out_tok, "duration": duration,
            "cached_tokens": sum(x["cached"] for x in done), **server_span(done, out_tok),
            "client_cpu_us_per_token": client_cpu / out_tok * 1e6 if out_tok else None}


def server_span(done: list[dict], out_tok: int) -> dict:
    """The server's own view of the run: first request received to last request finished (its
    meta_info timestamps), and the output throughput over that span (no client or HTTP latency in it)."""
    spans = [x["span"] for x in done if None not in x["span"]]
    if not spans or not out_tok:
        return {}
    span = max(f for _, f in spans) - min(r for r, _ in spans)
    return {"server_span_s": span, "server_span_output_throughput": out_tok / span if span > 0 else None}


def workload_rows(name: str, args: argparse.Namespace, tokenizer, vocab: int) -> list[tuple[list[int], int]]:
    """The (prompt ids, output length) rows of a dataset, the same for the builtin client and in-process."""
    if name == "random":
        rng = np.random.default_rng(1)
        return [(rng.integers(10, vocab - 10, args.input_len).tolist(), args.output_len)
                for _ in range(args.num_prompts)]
    return sharegpt_rows(tokenizer, args.num_prompts)


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
    out = {}
    try:
        for name in datasets:
            rows = workload_rows(name, args, eng.tokenizer, eng.cfg.vocab_size)
            ids = [r[0] for r in rows]
            sps = [{"max_new_tokens": r[1], "temperature": 0, "ignore_eos": True} for r in rows]
            for _ in range(2):
                eng.flush_cache()
                t0, cpu0 = time.perf_counter(), time.process_time()
                res = eng.generate(input_ids=ids, sampling_params=sps)
                dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            toks = sum(r["meta_info"]["completion_tokens"] for r in res)
            out[name] = {"output_throughput": toks / dt, "duration": dt, "total_output_tokens": toks,
                         "cached_tokens": sum(r["meta_info"]["cached_tokens"] for r in res),
                         "process_cpu_us_per_token": cpu / toks * 1e6 if toks else None}
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
    p.add_argument("--max-duration", type=float, default=0.0,
                   help="finite rates send at most rate x this many seconds of requests (0: --num-prompts)")
    p.add_argument("--client", default="auto", choices=["auto", "sglang", "builtin"],
                   help="bench_serving (sglang) or the builtin httpx client; auto: sglang if installed")
    p.add_argument("--smoke", action="store_true", help="tiny dummy model, few prompts, rate inf")
    p.add_argument("--no-in-process", action="store_true", help="skip the in-process comparison (server only)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.smoke:
        from _common import tiny_model_dir

        args.model, args.load_format = str(tiny_model_dir(with_tokenizer=True)), "dummy"
        args.num_prompts, args.input_len, args.output_len, args.rates = 8, 32, 8, ["inf"]
    if args.client == "auto":
        args.client = "sglang" if importlib.util.find_spec("sglang") is not None else "builtin"
    extra = shlex.split(args.server_args)
    flags = ["--load-format", args.load_format, *extra] + (["--model-path", args.model] if args.model else [])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tmp = Path(tempfile.mkdtemp(prefix="jaxsgl-serving-"))
    proc = launch(["--port", str(port), *flags], log=tmp / "server.log")
    results: dict = {"client": args.client, "args": {k: str(v) for k, v in vars(args).items()}, "server": {}, "in_process": {}}
    try:
        results["server_start_s"] = wait_healthy(url, 1800, proc)
        print(f"server ready in {results['server_start_s']:.1f} s (log: {tmp / 'server.log'})", flush=True)
        rows_of = {}
        if args.client == "builtin":
            from jaxsgl.model.config import ModelConfig
            from jaxsgl.tokenizer import load_tokenizer

            model_dir = httpx_get_json(url + "/get_model_info")["tokenizer_path"]
            vocab = ModelConfig.from_dir(model_dir).vocab_size
            tok = load_tokenizer(Path(model_dir)) if "sharegpt" in args.datasets else None
            rows_of = {ds: workload_rows(ds, args, tok, vocab) for ds in args.datasets}

        def run(ds: str, rate: str, out: Path) -> dict:
            if args.client == "sglang":
                return bench(url, ds, rate, args, out)
            return builtin_bench(url, rows_of[ds][:num_prompts(rate, args)], rate)

        for ds in args.datasets:
            run(ds, "inf", tmp / f"{ds}-warm.jsonl")  # untimed: compiles what the batches need
            for rate in args.rates:
                cpu0 = server_cpu(proc.pid)
                rec = run(ds, rate, tmp / f"{ds}-{rate}.jsonl")
                rec.update(cpu_per_token(cpu0, server_cpu(proc.pid), rec.get("total_output_tokens") or 0))
                results["server"][f"{ds}@{rate}"] = rec
                if args.out:  # partial results survive a timeout
                    args.out.write_text(json.dumps(results, indent=1))
                cpu = (f"  server CPU/token {rec['server_process_cpu_us_per_token']:7.1f} us (event loop "
                       f"{rec['server_loop_cpu_us_per_token']:6.1f})" if "server_loop_cpu_us_per_token" in rec else "")
                print(f"{ds:9s} rate {rate:>4s}: {rec['output_throughput']:9.1f} out tok/s  TTFT p50/p99 "
                      f"{rec['median_ttft_ms']:8.1f}/{rec['p99_ttft_ms']:8.1f} ms  ITL p50/p99 "
                      f"{rec['median_itl_ms']:6.1f}/{rec['p99_itl_ms']:6.1f} ms{cpu}", flush=True)
    finally:
        stop(proc)
    kw = {"load_format": args.load_format}
    parsed = {}
    if extra:
        from jaxsgl.server.launch import build_parser

        ns = build_parser().parse_args(extra)
        defaults = build_parser().parse_args([])
        parsed = {k: v for k, v in vars(ns).items() if v != getattr(defaults, k) and k in _engine_fields()}
    results["in_process"] = {} if args.no_in_process else in_process(args, {**kw, **parsed}, args.datasets)
    for ds, rec in results["in_process"].items():
        served = results["server"].get(f"{ds}@inf")
        ratio = served["output_throughput"] / rec["output_throughput"] if served else float("nan")
        rec["server_over_in_process"] = ratio
        span = (served or {}).get("server_span_output_throughput")
        inner = f" (over the server's own span {span / rec['output_throughput']:.1%})" if span else ""
        if span:
            rec["server_span_over_in_process"] = span / rec["output_throughput"]
        print(f"{ds:9s} in-process: {rec['output_throughput']:9.1f} out tok/s; server at rate inf = {ratio:.1%}"
              f"{inner}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return results


def httpx_get_json(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=60).json()


def _engine_fields() -> set[str]:
    import dataclasses

    from jaxsgl.engine.options import EngineOptions

    return {f.name for f in dataclasses.fields(EngineOptions)} - {"model_path", "load_format"}


if __name__ == "__main__":
    main()
