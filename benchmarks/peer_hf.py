"""The peer baseline: Hugging Face transformers `generate` on the same requests as offline_throughput.py.

    python benchmarks/peer_hf.py --model benchmarks/configs/llama-3.1-8b --load-format dummy \\
        --num-prompts 256 --batch-size 256 --input-len 128 128 --output-len 128 128 --datasets random sharegpt
    python benchmarks/peer_hf.py --smoke --out /tmp/h.json      # tiny random model on the CPU (CI)

Run it in the same device call as offline_throughput.py with the same --seed, --num-prompts,
--input-len, --output-len and --datasets: both build their requests with benchmarks/_common.py,
so the ratio of output tok/s compares identical work.

The model: random weights from a config.json (--load-format dummy: transformers' own init, made on
the device) or an HF checkpoint; bf16 on a GPU, fp32 on the CPU (--dtype). Batches of --batch-size
requests in arrival order, left-padded, greedy, each run for its longest request's output length
(eos off): HF generate's static batching. Output tok/s counts the tokens the requests asked for
(what a user gets); ms/step is the batch's wall time over its decode steps. Batch 1: ms per
output token from two runs of one --batch1-input-token prompt, (t(N) - t(1)) / (N - 1).
Prints a table and writes JSON (--out).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import DATASETS, make_workloads, tiny_model_dir, workload_summary  # noqa: E402

SMOKE = dict(num_prompts=4, batch_size=2, input_len=[8, 24], output_len=[2, 4], sharegpt_max_input=48,
             sharegpt_max_output=4, batch1_input=16, batch1_output=4, datasets=["random", "sharegpt"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="benchmarks/configs/llama-3.1-8b", help="config dir or HF checkpoint")
    ap.add_argument("--load-format", default="dummy", choices=["auto", "dummy"])
    ap.add_argument("--dtype", default="auto", help="auto (bfloat16 on a GPU, float32 on the CPU) | bfloat16 | float32")
    ap.add_argument("--attn-implementation", default=None, help="sdpa | eager | ... (default: transformers')")
    ap.add_argument("--datasets", nargs="+", default=["random"], choices=[d for d in DATASETS if d != "shared-prefix"])
    ap.add_argument("--num-prompts", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=None, help="requests per generate call (default: all)")
    ap.add_argument("--input-len", type=int, nargs=2, default=[16, 128])
    ap.add_argument("--output-len", type=int, nargs=2, default=[8, 32])
    ap.add_argument("--sharegpt-max-input", type=int, default=1024)
    ap.add_argument("--sharegpt-max-output", type=int, default=1024)
    ap.add_argument("--batch1-input", type=int, default=128)
    ap.add_argument("--batch1-output", type=int, default=32, help="0: skip the batch-1 measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny random model and workloads (CI: seconds on a CPU)")
    ap.add_argument("--out", default="peer_hf.json")
    args = ap.parse_args(argv)
    if args.smoke:
        for k, v in SMOKE.items():
            setattr(args, k, v)
        args.model, args.load_format = str(tiny_model_dir()), "dummy"
    # unused by these datasets, needed by make_workloads' signature
    args.groups, args.per_group, args.system_len = 0, 0, 0
    return args


def load_model(args: argparse.Namespace):
    """(model, device): random weights made on the device (dummy) or a checkpoint, in eval mode."""
    import torch
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    kw = {} if args.attn_implementation is None else {"attn_implementation": args.attn_implementation}
    # transformers >= 4.56 takes dtype=, older ones torch_dtype=
    kw["dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"] = dtype
    if args.load_format == "dummy":
        cfg = transformers.AutoConfig.from_pretrained(args.model)
        with device:  # initialise on the device: an 8B model's random init on the CPU takes minutes
            model = transformers.AutoModelForCausalLM.from_config(cfg, **kw)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(args.model, **kw).to(device)
    model.eval()
    model.generation_config.eos_token_id = None  # run every request to its output length
    model.generation_config.pad_token_id = 0
    return model, device


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def generate(model, device, prompts: list[list[int]], max_new: int) -> float:
    """Seconds for one greedy generate of the left-padded batch, exactly max_new tokens each."""
    import torch

    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    ids, mask = ids.to(device), mask.to(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                       do_sample=False)
    _sync(device)
    return time.perf_counter() - t0


def run_workload(model, device, work, batch_size: int) -> dict:
    """Static batches in arrival order; each runs to its longest output."""
    wall, steps, generated = 0.0, 0, 0
    for i in range(0, len(work), batch_size):
        batch = work[i:i + batch_size]
        max_new = max(w[1] for w in batch)
        wall += generate(model, device, [w[0] for w in batch], max_new)
        steps += max_new
        generated += max_new * len(batch)
    out_tok = sum(w[1] for w in work)
    prompt = sum(len(w[0]) for w in work)
    return {"requests": len(work), "batch_size": batch_size, "wall_s": wall, "req_per_s": len(work) / wall,
            "output_tok_per_s": out_tok / wall, "total_tok_per_s": (prompt + out_tok) / wall,
            "prompt_tokens": prompt, "output_tokens": out_tok, "generated_tokens": generated,
            "decode_steps": steps, "ms_per_step": 1e3 * wall / steps}


def batch1(model, device, in_len: int, out_len: int, vocab: int) -> dict:
    ids = np.random.default_rng(7).integers(10, vocab, in_len).tolist()  # as offline_throughput's batch1
    t1 = generate(model, device, [ids], 1)
    tn = generate(model, device, [ids], out_len)
    return {"ms_per_token": 1e3 * (tn - t1) / max(out_len - 1, 1), "first_token_ms": 1e3 * t1,
            "wall_s": tn, "output_tokens": out_len}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    import transformers

    t0 = time.perf_counter()
    model, device = load_model(args)
    vocab = model.config.vocab_size
    result = {"peer": "transformers.generate", "model": args.model, "load_format": args.load_format,
              "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "transformers": transformers.__version__,
              "dtype": str(next(model.parameters()).dtype),
              "attn_implementation": getattr(model.config, "_attn_implementation", None),
              "model_load_s": time.perf_counter() - t0, "args": vars(args)}
    generate(model, device, [[10, 11, 12, 13]], 2)  # CUDA context, kernels, allocator
    if args.batch1_output:
        result["batch1"] = batch1(model, device, args.batch1_input, args.batch1_output, vocab)
        print(f"batch1: {json.dumps(result['batch1'])}", flush=True)
    rows = []
    for name, work in make_workloads(args.datasets, args, vocab).items():
        bs = args.batch_size or len(work)
        generate(model, device, [w[0] for w in work[:bs]], 2)  # warm this batch shape's kernels
        r = run_workload(model, device, work, bs)
        result[name] = {**r, "workload": workload_summary(work)}
        rows.append((name, r))
        print(f"{name}: {json.dumps(r)}", flush=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"transformers {transformers.__version__} generate on {result['device']} ({result['dtype']}, "
          f"attention {result['attn_implementation']}); model ready in {result['model_load_s']:.1f}s", end="")
    if "batch1" in result:
        print(f"; batch-1 decode {result['batch1']['ms_per_token']:.2f} ms/token", end="")
    print()
    print(f"{'workload':<12}{'batch':>7}{'req/s':>9}{'out tok/s':>11}{'tok/s':>10}{'ms/step':>9}{'wall s':>8}")
    for name, r in rows:
        print(f"{name:<12}{r['batch_size']:>7}{r['req_per_s']:>9.2f}{r['output_tok_per_s']:>11.1f}"
              f"{r['total_tok_per_s']:>10.1f}{r['ms_per_step']:>9.2f}{r['wall_s']:>8.1f}")
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
