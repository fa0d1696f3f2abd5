"""Do serialized executables that call Mosaic GPU kernels load in a new process? (issue 14: the GPU warm start)

    python benchmarks/executable_reload.py --out reload.json          # Hopper: the question
    python benchmarks/executable_reload.py --smoke --out /tmp/r.json  # any backend: the flow, on plain-jnp programs

jaxsgl's executable cache (jaxsgl/model/compile_cache.py) skips tracing and lowering on a warm start, but on the
H200 (jax 0.11.2) executables holding the Mosaic GPU extend kernel failed to load in a new process ("Failed to
lookup host symbol ... kernel_mosaic_gpu": session 14 saw 1 of 17 fail, session 15 10 of 15). The lead (session 16,
read in jaxlib's source): a loaded kernel links its host launcher against $MOSAIC_GPU_RUNTIME_LIB_PATH, which jax
sets only when jax.experimental.mosaic.gpu is imported, i.e. when something is lowered first; the cache now sets
it itself (compile_cache.mosaic_gpu_runtime). This script checks that. It compiles two programs that each call
the kernel (two shapes, two kernels), serializes their executables as the cache does and keeps their outputs;
then, each in a fresh process, loads and runs them with the variable unset (in order, or one alone), set by
mosaic_gpu_runtime (in either order), or unset but after lowering first (what JAX's own persistent cache does
before loading). Loads that fail unset and work set confirm the lead; loads that work alone and fail second
would say that the kernels' host symbols collide within a process.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

# (load order, lower first, $MOSAIC_GPU_RUNTIME_LIB_PATH: "unset" or "set" by compile_cache.mosaic_gpu_runtime)
SCENARIOS = [("a,b", False, "unset"), ("a", False, "unset"), ("a,b", False, "set"), ("b,a", False, "set"),
             ("a,b", True, "unset")]


def programs(smoke: bool) -> dict:
    """name -> (jitted fn, args): two Mosaic extend kernels of different shapes (smoke: two plain-jnp programs)."""
    import jax
    import jax.numpy as jnp

    if smoke:
        x = jnp.arange(64, dtype=jnp.float32).reshape(8, 8) / 64
        return {"a": (jax.jit(lambda v: jnp.tanh(v @ v)), (x,)), "b": (jax.jit(lambda v: jnp.sin(v) @ v.T), (x,))}
    import mosaic_extend_probe as probe  # benchmarks/ (this script's directory is on sys.path)
    from jaxsgl.kernels.paged_extend_mosaic import MosaicConfig

    out = {}
    for name, (prefix, new) in (("a", (0, 512)), ("b", (1024, 256))):
        sets = probe.paged_inputs(prefix, new, jnp.bfloat16, 16, rotations=1)
        fn, argsets = probe.kernel_only(sets, MosaicConfig())
        out[name] = (fn, argsets[0])
    return out


def child_write(folder: Path, smoke: bool) -> None:
    """Compile each program, write its serialized executable and output; print a JSON line each."""
    from jax.experimental.serialize_executable import serialize

    from jaxsgl.model.compile_cache import custom_call_targets

    for name, (fn, args) in programs(smoke).items():
        lowered = fn.lower(*args)
        compiled = lowered.compile()
        np.save(folder / f"{name}.npy", np.asarray(compiled(*args), np.float32))
        (folder / f"{name}.pkl").write_bytes(pickle.dumps(serialize(compiled)))
        print(json.dumps({"name": name, "custom_calls": sorted(custom_call_targets(lowered.as_text()))}), flush=True)


def child_load(folder: Path, smoke: bool, order: list[str], lower_first: bool, runtime: str) -> None:
    """Load (after lowering, with lower_first) and run each program in order, with the Mosaic runtime's
    variable unset or set (mutates os.environ); print a JSON line each."""
    from jax.experimental.serialize_executable import deserialize_and_load

    from jaxsgl.model.compile_cache import MOSAIC_GPU_RUNTIME_ENV, mosaic_gpu_runtime

    progs = programs(smoke)
    os.environ.pop(MOSAIC_GPU_RUNTIME_ENV, None)
    if runtime == "set":
        mosaic_gpu_runtime()
    for name in order:
        fn, args = progs[name]
        row = {"name": name, "loaded": False, "same_output": None, "error": None}
        try:
            if lower_first:
                fn.lower(*args)
            row["runtime_lib"] = os.environ.get(MOSAIC_GPU_RUNTIME_ENV)
            exe = deserialize_and_load(*pickle.loads((folder / f"{name}.pkl").read_bytes()))
            row["loaded"] = True
            out = np.asarray(exe(*args), np.float32)
            row["same_output"] = bool(np.array_equal(out, np.load(folder / f"{name}.npy"), equal_nan=True))
        except Exception as e:  # noqa: BLE001 - the failure is the result
            row["error"] = f"{type(e).__name__}: {e}"[:400]
        print(json.dumps(row), flush=True)


def run_child(*args: str) -> list[dict]:
    """This script in a fresh process; its JSON lines (the process's stderr tail on a crash)."""
    res = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, timeout=600)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0:
        rows.append({"name": "-", "error": f"process exited {res.returncode}: {res.stderr[-400:]}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="plain-jnp programs on any backend (CI: the flow runs)")
    ap.add_argument("--out", default="executable_reload.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        folder, smoke = Path(a.child[1]), a.child[2] == "smoke"
        if a.child[0] == "write":
            return child_write(folder, smoke)
        return child_load(folder, smoke, a.child[3].split(","), a.child[4] == "lower", a.child[5])
    import jax

    mode = "smoke" if a.smoke else "mosaic"
    with tempfile.TemporaryDirectory() as tmp:
        written = run_child("write", tmp, mode)
        runs = [{"order": order, "lower_first": lower, "runtime_lib": runtime,
                 "loads": run_child("load", tmp, mode, order, "lower" if lower else "plain", runtime)}
                for order, lower, runtime in SCENARIOS]
    print(f"\ncompiled: {written}\n\n| process loads | lowered first | runtime library variable | result per program |"
          "\n|---|---|---|---|")
    for r in runs:
        cells = "; ".join(f"{x['name']}: " + ("ok" if x.get("loaded") and x.get("same_output") else
                                              "loaded, output differs" if x.get("loaded") else
                                              f"FAILED ({(x.get('error') or '')[:120]})") for x in r["loads"])
        print(f"| {r['order']} | {r['lower_first']} | {r['runtime_lib']} | {cells} |")
    Path(a.out).write_text(json.dumps({"argv": sys.argv, "device": str(jax.devices()[0].device_kind),
                                       "jax": jax.__version__, "mode": mode, "written": written, "runs": runs},
                                      indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
