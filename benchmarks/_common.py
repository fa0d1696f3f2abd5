"""Shared by the benchmark scripts (not a script itself): tiny smoke-test models and the workloads.

    from _common import tiny_model_dir, random_dataset, sharegpt_dataset

tiny_model_dir() writes a 2-layer Llama config.json (random weights come from --load-format
dummy) into a temporary directory, optionally with the default model's tokenizer files (then
the vocabulary is the default model's). The workloads are lists of (prompt token ids, output
length), the same for every script given the same seed, so offline_throughput.py (jaxsgl) and
peer_hf.py (transformers) run identical requests.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("JAXSGL_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data") / "sharegpt"
SHAREGPT_PROMPTS = DATA / "ShareGPT_V3_filtered_1000.json"  # first human turns only
SHAREGPT_PAIRS = DATA / "sharegpt_sample_50_2turn.json"  # human + gpt turn pairs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
Workload = list[tuple[list[int], int]]


def tiny_config(vocab_size: int = 512) -> dict:
    """A Llama config small enough to compile in about a second on a CPU (GQA 4:2, 2 layers)."""
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab_size,
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "head_dim": 16, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "max_position_embeddings": 2048, "tie_word_embeddings": True, "bos_token_id": 1,
            "eos_token_id": 2, "torch_dtype": "float32", "hidden_act": "silu"}


def tiny_model_dir(with_tokenizer: bool = False) -> Path:
    """A new temporary directory holding tiny_config() (load it with load_format="dummy"); with
    with_tokenizer, also the default model's tokenizer (and its vocabulary size and eos)."""
    out = Path(tempfile.mkdtemp(prefix="jaxsgl-bench-tiny-"))
    cfg = tiny_config()
    if with_tokenizer:
        from jaxsgl.model.resolve import resolve_model_dir

        src = resolve_model_dir(None)
        for name in TOKENIZER_FILES:
            if (src / name).exists():
                shutil.copy(src / name, out / name)
        default = json.loads((src / "config.json").read_text())
        cfg.update(vocab_size=default["vocab_size"], bos_token_id=default.get("bos_token_id"),
                   eos_token_id=default.get("eos_token_id"))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


def random_dataset(rng: np.random.Generator, n: int, in_len: tuple[int, int], out_len: tuple[int, int],
                   vocab: int) -> Workload:
    """n requests with input/output lengths uniform in the given inclusive ranges (random ids)."""
    return [(rng.integers(10, vocab, int(rng.integers(in_len[0], in_len[1] + 1))).tolist(),
             int(rng.integers(out_len[0], out_len[1] + 1))) for _ in range(n)]


def shared_prefix_dataset(rng: np.random.Generator, groups: int, per_group: int, system_len: int, out_len: int,
                          vocab: int) -> Workload:
    """groups x per_group requests: a system_len prefix per group + a 64-token question, shuffled."""
    work = []
    for _ in range(groups):
        system = rng.integers(10, vocab, system_len).tolist()
        work += [(system + rng.integers(10, vocab, 64).tolist(), out_len) for _ in range(per_group)]
    order = rng.permutation(len(work))
    return [work[i] for i in order]


def default_tokenizer():
    """The default model's tokenizer (SmolLM2-135M-Instruct), which tokenizes the ShareGPT texts."""
    from jaxsgl.model.resolve import resolve_model_dir
    from jaxsgl.tokenizer import load_tokenizer

    return load_tokenizer(resolve_model_dir(None))


def _sharegpt_tokenizer(model: str | None):
    """The default model's tokenizer; where it is not installed (the GPU machine), the benchmarked
    model's own tokenizer.json (.gpu/ carries the default model's there)."""
    from jaxsgl.tokenizer import load_tokenizer
    try:
        return default_tokenizer()
    except FileNotFoundError:
        if model is None or not Path(model, "tokenizer.json").exists():
            raise
        return load_tokenizer(Path(model))


def sharegpt_dataset(n: int, seed: int = 0, max_input: int = 1024, max_output: int = 1024,
                     vocab: int | None = None, tokenizer=None) -> Workload:
    """n ShareGPT-shaped requests: real prompts (first human turns of ShareGPT_V3_filtered_1000,
    tokenized with the default model's tokenizer, cut to max_input tokens) and output lengths of
    the real replies (the gpt turns of sharegpt_sample_50_2turn, tokenized the same way, at most
    max_output). Prompts shorter than 4 tokens are skipped (as vLLM's ShareGPT filter does).
    Token ids >= vocab (a smaller model's vocabulary) are folded into it."""
    tok = tokenizer or default_tokenizer()
    prompts = [c["conversations"][0]["value"] for c in json.loads(SHAREGPT_PROMPTS.read_text())
               if c.get("conversations") and c["conversations"][0].get("from") == "human"]
    replies = [t["value"] for c in json.loads(SHAREGPT_PAIRS.read_text())
               for t in c["conversations"] if t.get("from") == "gpt"]
    rnd = random.Random(seed)
    rnd.shuffle(prompts)
    out_lens = [min(max(len(tok.encode(r, add_special_tokens=False)), 1), max_output) for r in replies]
    work: Workload = []
    for text in prompts:
        ids = tok.encode(text, add_special_tokens=False)[:max_input]
        if len(ids) < 4:
            continue
        if vocab is not None:
            ids = [t % vocab for t in ids]
        work.append((ids, rnd.choice(out_lens)))
        if len(work) == n:
            break
    return work


DATASETS = ("random", "shared-prefix", "sharegpt")


def make_workloads(names: list[str], args, vocab: int) -> dict[str, Workload]:
    """The named datasets from args (num_prompts, input_len, output_len, groups, per_group, system_len,
    sharegpt_max_input, sharegpt_max_output, seed). Each dataset draws from its own seeded generator,
    so a script running a subset still gets the same requests as one running them all."""
    out = {}
    for name in names:
        rng = np.random.default_rng([args.seed, DATASETS.index(name)])
        if name == "random":
            out[name] = random_dataset(rng, args.num_prompts, args.input_len, args.output_len, vocab)
        elif name == "shared-prefix":
            out[name] = shared_prefix_dataset(rng, args.groups, args.per_group, args.system_len,
                                              args.output_len[0], vocab)
        elif name == "sharegpt":
            out[name] = sharegpt_dataset(args.num_prompts, args.seed, args.sharegpt_max_input,
                                         args.sharegpt_max_output, vocab=vocab,
                                         tokenizer=_sharegpt_tokenizer(getattr(args, "model", None)))
        else:
            raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    return out


def workload_summary(work: Workload) -> dict:
    """Request count and the input/output length distribution (for the JSON record)."""
    ins, outs = [len(w[0]) for w in work], [w[1] for w in work]
    return {"requests": len(work), "input_tokens": sum(ins), "output_tokens": sum(outs),
            "input_len_mean": float(np.mean(ins)), "input_len_max": max(ins),
            "output_len_mean": float(np.mean(outs)), "output_len_max": max(outs)}


def gpu_kernel_times(run, iters: int, counts: dict[str, int] | None = None) -> tuple[dict[str, float], float]:
    """Trace `iters` calls of run() with jax.profiler (CUPTI): total GPU ns per kernel name (first 80
    characters) and the GPU's busy span in ns, over all calls ({} and 0 when no GPU kernels ran).
    Adds each name's number of launches to `counts` (mutated) when given."""
    import collections
    import glob

    import jax

    jax.block_until_ready(run())
    d = tempfile.mkdtemp()
    with jax.profiler.trace(d):
        for _ in range(iters):
            out = run()
        jax.block_until_ready(out)
    prof = jax.profiler.ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    per: dict[str, float] = collections.defaultdict(float)
    lo, hi = float("inf"), 0.0
    for plane in prof.planes:
        if not plane.name.startswith("/device:GPU"):
            continue
        for line in plane.lines:
            if "Stream" not in line.name:  # the other lines (XLA Ops, Modules) repeat the kernels
                continue
            for ev in line.events:
                per[ev.name[:80]] += ev.duration_ns
                if counts is not None:
                    counts[ev.name[:80]] = counts.get(ev.name[:80], 0) + 1
                lo, hi = min(lo, ev.start_ns), max(hi, ev.end_ns)
    shutil.rmtree(d, ignore_errors=True)
    return dict(per), (hi - lo if per else 0.0)


KERNEL_KINDS = (("matmul", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul", "dot")),
                ("attention", ("attention", "paged", "ragged", "mosaic", "pallas", "triton", "flash")),
                ("layout copy", ("copy", "transpose")),
                ("sampling / reductions", ("reduce", "sort", "topk", "argmax", "scan")))


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other fusions")


def profile_kernels(run, iters: int) -> dict:
    """GPU time per call of each kernel `run` launches (CUPTI via jax.profiler), grouped by kind."""
    import collections

    counts: dict[str, int] = {}
    per, span = gpu_kernel_times(run, iters, counts)
    if not per:
        return {"error": "no GPU kernels in the trace"}
    kinds: dict[str, float] = collections.defaultdict(float)
    launches: dict[str, float] = collections.defaultdict(float)
    for name, ns in per.items():
        kinds[kernel_kind(name)] += ns
        launches[kernel_kind(name)] += counts[name] / iters
    us = lambda ns: round(ns / iters / 1e3, 1)  # noqa: E731
    top = sorted(per, key=lambda k: -per[k])[:200]
    return {"kinds_us": {k: us(v) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
            "launches": {k: round(v, 1) for k, v in sorted(launches.items(), key=lambda kv: -kv[1])},
            "kernels_us": {k: us(per[k]) for k in top},
            "kernel_launches": {k: round(counts[k] / iters, 1) for k in top},
            "sum_us": us(sum(per.values())), "span_us": us(span)}


def host_event_times(run, iters: int, top: int = 25) -> list[dict]:
    """Trace `iters` calls of run() with jax.profiler and return the host-side events (XLA/PJRT/CUDA
    runtime TraceMe annotations, not Python frames) that took the most time in all: name, thread,
    count, total and longest ms. Shows which host call waits (e.g. a transfer behind a running step).
    Note: while profiling, XLA runs its CUDA graphs as plain kernel launches."""
    import collections
    import glob

    import jax

    d = tempfile.mkdtemp()
    with jax.profiler.trace(d):
        for _ in range(iters):
            run()
    prof = jax.profiler.ProfileData.from_file(glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0])
    agg: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for plane in prof.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for ev in line.events:
                if ev.name.startswith("$"):  # Python frames
                    continue
                a = agg[(ev.name[:100], line.name[:40])]
                a[0] += 1
                a[1] += ev.duration_ns / 1e6
                a[2] = max(a[2], ev.duration_ns / 1e6)
    shutil.rmtree(d, ignore_errors=True)
    rows = sorted(agg.items(), key=lambda kv: -kv[1][1])[:top]
    return [{"name": n, "thread": t, "count": c, "total_ms": round(tot, 3), "max_ms": round(mx, 3)}
            for (n, t), (c, tot, mx) in rows]
