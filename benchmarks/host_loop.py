"""The engine loop's host work per step, with no device: the real StepLoop, Scheduler, StepInputBuilder,
sampling inputs, packing and RequestTracker around a stand-in runner that packs the inputs as
ModelRunner does and returns token ids at once. What the GPU's step must hide (docs/perf.md, "Session 12").

    python benchmarks/host_loop.py                          # 256 requests x 128 in / 128 out
    python benchmarks/host_loop.py --batch 64 --tokenizer   # with the default model's tokenizer (detokenizing)
    python benchmarks/host_loop.py --smoke --out /tmp/h.json

Prints the median host milliseconds per decode step at full batch by phase (StepTrace: prepare, dispatch,
process), from the least disturbed of --repeats runs (a shared VM's single runs spread by 30%), and writes
JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jaxsgl.engine.detokenize import OutputText  # noqa: E402
from jaxsgl.engine.model_runner import StepHandle, _inputs, _unpack_output  # noqa: E402
from jaxsgl.engine.outputs import RequestTracker  # noqa: E402
from jaxsgl.engine.packing import pack  # noqa: E402
from jaxsgl.engine.request_state import RequestState  # noqa: E402
from jaxsgl.engine.sampling import output_layout  # noqa: E402
from jaxsgl.engine.sampling_params import SamplingParams  # noqa: E402
from jaxsgl.engine.step_loop import StepLoop  # noqa: E402
from jaxsgl.scheduler import Req, Scheduler, StepInputBuilder  # noqa: E402

PHASES = ("prepare_time", "dispatch_time", "wait_time", "process_time")


class HostOnlyRunner:
    """ModelRunner's host side (packing the inputs, unpacking the outputs) without a device: each
    step "samples" random ordinary tokens (ids 1,000-29,999: text that detokenizes, no special tokens)."""

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def run_async(self, step, si, flags, prev, src, hint=None, grammar=None) -> StepHandle:
        pack({**_inputs(step, si), "src": np.asarray(src, np.int32)})
        layout = output_layout(step.num_seqs, step.num_tokens, flags)
        out = np.zeros(sum(int(np.prod(shape)) for _, shape, _ in layout), np.int32)
        out[:step.num_seqs] = self.rng.integers(1000, 30000, step.num_seqs)
        return StepHandle(out, None, layout)

    def collect(self, handle: StepHandle):
        return _unpack_output(handle.out, handle.layout)


def run(batch: int, input_len: int, output_len: int, tokenizer=None, overlap: bool = True) -> dict:
    ps = 16
    sched = Scheduler.create(batch * -(-(input_len + output_len + 1) // ps) + 8, ps, max_running_requests=batch,
                             chunked_prefill_size=8192, max_prefill_tokens=8192,
                             max_context_len=input_len + output_len + 1)
    builder = StepInputBuilder.for_limits(ps, max_tokens=8192 + batch, max_seqs=batch,
                                          max_context_len=input_len + output_len + 1)
    builder.narrow_page_tables = True
    tracker = RequestTracker(sched, {2})
    loop = StepLoop(sched, builder, HostOnlyRunner(), tracker, overlap=overlap)
    rng = np.random.default_rng(0)
    for i in range(batch):
        params = SamplingParams(max_new_tokens=output_len, temperature=0, ignore_eos=True, seed=i)
        req = Req(f"r{i}", rng.integers(10, 30000, input_len).tolist(), max_new_tokens=output_len)
        tracker.states[req.rid] = RequestState(req, params, OutputText(tokenizer, [], True, []))
        sched.add_request(req)
    for _ in range(10 * (output_len + 4)):
        if not sched.has_work() and loop.inflight is None:
            break
        loop.step()
    full = [t for t in sched.trace_records() if t["num_decode_seqs"] == batch and not t["prefill_tokens"]]
    ms = {p: 1e3 * statistics.median(t[p] for t in full) for p in PHASES} if full else {}
    ms["host_total"] = sum(ms.get(p, 0.0) for p in ("prepare_time", "dispatch_time", "process_time"))
    return {"batch": batch, "decode_steps_at_full_batch": len(full), "median_ms": ms,
            "finished": sum(1 for r, _ in tracker.finished)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--tokenizer", action="store_true", help="detokenize with the default model's tokenizer")
    ap.add_argument("--repeats", type=int, default=3, help="runs per batch size; the one with the least host time counts")
    ap.add_argument("--smoke", action="store_true", help="batch 4, 8 in / 8 out (CI)")
    ap.add_argument("--out", default="host_loop.json")
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.input_len, args.output_len, args.repeats = [4], 8, 8, 1
    tok = None
    if args.tokenizer:
        from jaxsgl.model.resolve import resolve_model_dir
        from jaxsgl.tokenizer import load_tokenizer

        tok = load_tokenizer(resolve_model_dir(None))
    rows = [min((run(b, args.input_len, args.output_len, tok) for _ in range(args.repeats)),
                key=lambda r: r["median_ms"]["host_total"]) for b in args.batch]
    print(f"{'batch':>6}{'prepare ms':>12}{'dispatch ms':>13}{'process ms':>12}{'host ms':>9}  (median per decode step)")
    for r in rows:
        m = r["median_ms"]
        print(f"{r['batch']:>6}{m.get('prepare_time', 0):>12.3f}{m.get('dispatch_time', 0):>13.3f}"
              f"{m.get('process_time', 0):>12.3f}{m['host_total']:>9.3f}")
    Path(args.out).write_text(json.dumps({"argv": sys.argv, "tokenizer": bool(tok), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
