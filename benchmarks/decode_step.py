"""Where a decode step's time goes: the jitted step alone (device) vs the whole engine step (host + device).

    python benchmarks/decode_step.py --model benchmarks/configs/llama-3.1-8b --load-format dummy
    python benchmarks/decode_step.py --smoke --out /tmp/d.json      # tiny random model on the CPU (CI)

For each batch size it times, on one fixed decode StepInput (context --context tokens):
  device_ms   the jitted forward + greedy sampling on inputs already on the device, back to back
  sync_ms     the same with a device->host copy of the outputs after every call
  runner_ms   ModelRunner.run from host arrays: pack, one transfer, step, one transfer back (the engine's path)
and with the page table as wide as the engine makes it (--context-length of the model) and as narrow
as the batch needs, so the cost of the table width shows. Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import tiny_model_dir  # noqa: E402
from jaxsgl import kernels  # noqa: E402
from jaxsgl.engine.model_runner import ModelRunner  # noqa: E402
from jaxsgl.engine.sampling import SamplingFlags  # noqa: E402
from jaxsgl.engine.step_sampling import greedy_sampling_input  # noqa: E402
from jaxsgl.engine.packing import pack  # noqa: E402
from jaxsgl.model.loader import load_model  # noqa: E402
from jaxsgl.model.step_input import make_step_input, step_input_fields  # noqa: E402


def time_calls(fn, n: int, sync_each: bool) -> float:
    out = fn()
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    for _ in range(n):
        out = fn()
        if sync_each:
            np.asarray(out)
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="HF directory or config dir (with --load-format dummy)")
    ap.add_argument("--load-format", default="auto")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--attention-backend", default="auto")
    ap.add_argument("--narrow-only", action="store_true", help="skip the model-context-wide page table")
    ap.add_argument("--smoke", action="store_true", help="tiny random model, batches 1 2, context 32, 3 iters")
    ap.add_argument("--out", default="decode_step.json")
    args = ap.parse_args()
    if args.smoke:
        args.model, args.load_format = str(tiny_model_dir()), "dummy"
        args.batches, args.context, args.iters = [1, 2], 32, 3
    if args.model is None:
        ap.error("--model is required (or --smoke)")
    cfg, weights, _ = load_model(args.model, load_format=args.load_format)
    ps = args.page_size
    pages_per_seq = -(-(args.context + 1) // ps)
    wide = -(-cfg.max_position_embeddings // ps)
    runner = ModelRunner(cfg, weights, num_pages=max(args.batches) * pages_per_seq + 1, page_size=ps,
                         attn_impl=kernels.resolve_impl(args.attention_backend))
    flags = SamplingFlags()
    rows = []
    for S in args.batches:
        seqs = [([7], args.context, list(range(1 + i * pages_per_seq, 1 + (i + 1) * pages_per_seq))) for i in range(S)]
        for width in (pages_per_seq,) if args.narrow_only else (pages_per_seq, wide):
            step = make_step_input(seqs, ps, num_tokens=max(S, 16), pages_per_seq=width)
            si = greedy_sampling_input(S, step.num_tokens)
            arrays = {"step." + n: getattr(step, n) for n in step_input_fields()}
            arrays.update({"samp." + f.name: getattr(si, f.name) for f in dataclasses.fields(si)})
            flat, layout = pack(arrays)
            flat = jax.device_put(flat)
            fn = runner._fn(flags)
            hint = kernels.step_hint(np.diff(step.query_start), runner.attn_impl)  # the engine's variant

            def device_only():
                out, runner.kv = fn(runner.weights, runner.kv, flat, layout=layout, hint=hint)
                return out

            row = {"batch": S, "page_table_width": width, "context": args.context,
                   "device_ms": time_calls(device_only, args.iters, False),
                   "sync_ms": time_calls(device_only, args.iters, True),
                   "runner_ms": time_calls(lambda: runner.run(step, si, flags).token_ids, args.iters, False)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"model": args.model, "device": jax.devices()[0].device_kind,
                                          "argv": sys.argv, "rows": rows}, indent=2))
    print(f"{'batch':>6}{'P width':>9}{'device ms':>11}{'sync ms':>9}{'runner ms':>11}")
    for r in rows:
        print(f"{r['batch']:>6}{r['page_table_width']:>9}{r['device_ms']:>11.2f}{r['sync_ms']:>9.2f}"
              f"{r['runner_ms']:>11.2f}")


if __name__ == "__main__":
    main()
