"""Cold start: how long until an engine is ready to serve, on an empty compile cache and then on a warm one.

    python benchmarks/cold_start.py                                       # the default model (CPU or GPU)
    python benchmarks/cold_start.py --model-path benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --engine-args "--max-running-requests 64 --seq-buckets 64 --chunked-prefill-size 512"
    python benchmarks/cold_start.py --smoke --out /tmp/c.json              # tiny random model (CI)

Each start is a fresh process (`python -c` that imports jaxsgl, builds Engine(..., warmup=True) and runs
one greedy request) with the same $JAXSGL_CACHE, which the first start finds empty (a new temporary
directory unless --cache is given): start 1 is a fresh machine's, start 2 onwards find the compiled
steps (and the converted GGUF) in the cache. Reported per start: wall seconds until the process
exits, and from inside it: import, engine ready (weights, KV, warm-up compiles of every step variant),
first request, and how many step variants the warm-up compiled. Prints a table and writes JSON.
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

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, logging, sys, time
t0 = time.perf_counter()
import jax
import jaxsgl
from jaxsgl.engine.engine import Engine
cache_events, log_lines = {}, []
def on_event(event, **_):
    if event.startswith("/jax/compilation_cache/"):
        cache_events[event] = cache_events.get(event, 0) + 1
jax.monitoring.register_event_listener(on_event)
durations = {}  # seconds summed over threads: tracing, lowering, backend compile (a cache hit's load included)
def on_duration(event, duration, **_):
    if event.startswith(("/jax/core/compile/", "/jax/compilation_cache/cache_retrieval")):
        durations[event] = durations.get(event, 0.0) + duration
jax.monitoring.register_event_duration_secs_listener(on_duration)
class Keep(logging.Handler):
    def emit(self, record):
        log_lines.append(f"{record.relativeCreated / 1e3:.1f}s {record.name}: {record.getMessage()}")
logging.getLogger("jaxsgl").addHandler(Keep())
logging.getLogger("jaxsgl").setLevel(logging.INFO)
logging.getLogger("jaxsgl.model.compile_cache").setLevel(logging.DEBUG)  # each executable's load time
t1 = time.perf_counter()
eng = Engine(sys.argv[1] or None, warmup=True, **json.loads(sys.argv[2]))
t2 = time.perf_counter()
out = eng.generate(input_ids=[1, 2, 3, 4], sampling_params={"max_new_tokens": 4, "temperature": 0})
t3 = time.perf_counter()
print("COLD_START " + json.dumps({"import_s": t1 - t0, "engine_ready_s": t2 - t1, "first_request_s": t3 - t2,
                                  "variants": eng.runner.num_compiled(), "tokens": len(out["output_ids"]),
                                  "output_ids": out["output_ids"], "torch_imported": sys.modules.get("torch") is not None,
                                  "transformers": getattr(sys.modules.get("transformers"), "__version__", None),
                                  "jax_cache_events": cache_events, "jax_compile_seconds": durations, "log": log_lines}))
eng.shutdown()
"""


def engine_kwargs(model_args: argparse.Namespace, extra: str) -> dict:
    """EngineOptions from --load-format and launch_server-style flags (only the ones given)."""
    from jaxsgl.server.launch import build_parser

    parser = build_parser()
    given, defaults = vars(parser.parse_args(shlex.split(extra))), vars(parser.parse_args([]))
    kw = {k: v for k, v in given.items() if v != defaults[k] and k not in ("model_path", "host", "port")}
    kw["load_format"] = model_args.load_format
    return kw


def child_env(cache: Path) -> dict[str, str]:
    """A start's environment: this one, with $JAXSGL_CACHE at `cache` and ROOT ahead of the caller's
    PYTHONPATH, which it keeps: the device scripts put the carried wheels there (transformers 5.18,
    benchmarks/device/_env.sh); replacing it (until session 20) timed the image's own packages."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "JAXSGL_CACHE": str(cache), "JAXSGL_PROGRESS": "0", "PYTHONPATH": path}


def one_start(model: str, kwargs: dict, cache: Path, timeout: float) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD, model, json.dumps(kwargs)], capture_output=True, text=True,
                          env=child_env(cache), timeout=timeout)
    wall = time.perf_counter() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("COLD_START ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"start failed (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return {"wall_s": wall, **json.loads(lines[-1][len("COLD_START "):])}


def _hits(start: dict) -> str:
    """JAX's persistent compilation-cache hits/misses in one start."""
    ev = start.get("jax_cache_events", {})
    return f"{ev.get('/jax/compilation_cache/cache_hits', 0)}/{ev.get('/jax/compilation_cache/cache_misses', 0)}"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default="", help="default: the embedded default model")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--engine-args", default="", help="launch_server flags for the engine (one string)")
    ap.add_argument("--starts", type=int, default=2, help="starts in a row on one cache (the first finds it empty)")
    ap.add_argument("--cache", type=Path, default=None, help="$JAXSGL_CACHE (default: a new empty directory)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--smoke", action="store_true", help="tiny random model, small buckets (CI)")
    ap.add_argument("--out", type=Path, default=Path("cold_start.json"))
    args = ap.parse_args(argv)
    if args.smoke:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _common import tiny_model_dir

        args.model_path, args.load_format = str(tiny_model_dir(with_tokenizer=True)), "dummy"
        args.engine_args = "--max-running-requests 2 --chunked-prefill-size 32 --context-length 256"
    kwargs = engine_kwargs(args, args.engine_args)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="jaxsgl-cold-"))
    starts = []
    for i in range(args.starts):
        starts.append(one_start(args.model_path, kwargs, cache, args.timeout))
        print(json.dumps({"start": i + 1, **starts[-1]}), flush=True)
    import platform

    # the same greedy tokens from the fresh compiles and from the cached (JAX's or jaxsgl's) executables
    same = all(s["output_ids"] == starts[0]["output_ids"] for s in starts)
    result = {"argv": sys.argv[1:], "engine_kwargs": kwargs, "machine": platform.node(), "cache": str(cache),
              "same_tokens_every_start": same, "starts": starts}
    args.out.write_text(json.dumps(result, indent=1))
    print(f"{'start':>6}{'wall s':>9}{'import s':>10}{'ready s':>9}{'1st req s':>11}{'variants':>10}"
          f"{'hits/misses':>13}{'trace s':>9}{'lower s':>9}{'compile s':>11}{'cache read s':>14}")
    for i, s in enumerate(starts, 1):
        print(f"{i:>6}{s['wall_s']:>9.1f}{s['import_s']:>10.1f}{s['engine_ready_s']:>9.1f}"
              f"{s['first_request_s']:>11.2f}{s['variants']:>10}{_hits(s):>13}"
              + "".join(f"{_seconds(s, key):>{w}.1f}" for key, w in _PHASES))
    print("(trace / lower / compile / cache read: seconds summed over the compiling threads; a cache hit's "
          "load is in both compile and cache read)")
    print(f"first request's greedy tokens the same in every start: {same}")
    return result


_PHASES = (("/jax/core/compile/jaxpr_trace_duration", 9), ("/jax/core/compile/jaxpr_to_mlir_module_duration", 9),
           ("/jax/core/compile/backend_compile_duration", 11), ("/jax/compilation_cache/cache_retrieval_time_sec", 14))


def _seconds(start: dict, event: str) -> float:
    return start.get("jax_compile_seconds", {}).get(event, 0.0)


if __name__ == "__main__":
    main()
