"""Command line: `jaxsgl generate ...` and `jaxsgl serve ...`. Only generated text goes to stdout.

`generate` runs one prompt through the Engine (bucketed step shapes, overlap scheduling) sized
for a single request: one sequence bucket, prefill in page-sized chunks (so every step of a
prompt, whatever its length, pads to the same token bucket), and a fixed KV pool (its shape is
part of the compiled step). With JAX's persistent compilation cache under `$JAXSGL_CACHE/xla`
a second run, with any prompt length, reuses the first run's compiled step. The tokenizer loads
on a background thread while the engine starts. Logs and timings go to stderr.

`serve` hands its arguments to `jaxsgl.server.launch.main` (SGLang's launch_server options).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import sys
import time
from typing import Any

log = logging.getLogger("jaxsgl")
CLI_TOTAL_TOKENS = 4096  # default KV pool of `generate`: constant, so its compiled steps are reused


def _tokenize(model_dir: Any, prompt: str, chat: bool) -> tuple[Any, list[int], float]:
    """(tokenizer, prompt ids, seconds): runs on a worker thread while the engine starts."""
    t0 = time.perf_counter()
    from jaxsgl.tokenizer import chat_prompt_ids, load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = chat_prompt_ids(tok, [{"role": "user", "content": prompt}]) if chat else tok.encode(prompt)
    return tok, list(ids), time.perf_counter() - t0


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def engine_options(args: argparse.Namespace, on_cpu: bool) -> dict[str, Any]:
    """Engine options for one request (see the module docstring); explicit flags win."""
    # An upper bound on the prompt's tokens before it is tokenized (every token covers >= 1 byte;
    # a chat template adds its own text): a longer request gets a bigger (and new) pool.
    bound = len(args.prompt.encode()) + (512 if args.chat else 8) + args.max_new_tokens
    total = args.max_total_tokens or max(CLI_TOTAL_TOKENS, _pow2_at_least(bound))
    chunk = args.chunked_prefill_size or (args.page_size if on_cpu else 512)
    if chunk % args.page_size:  # the scheduler chunks prompts in whole pages
        raise ValueError(f"--chunked-prefill-size {chunk} must be a multiple of --page-size {args.page_size}")
    return dict(dtype=args.dtype, load_format=args.load_format, random_seed=args.seed,
                attention_backend=args.attention_backend, page_size=args.page_size, max_total_tokens=total,
                max_running_requests=1, seq_buckets=[1], chunked_prefill_size=chunk, max_prefill_tokens=chunk,
                disable_radix_cache=True, skip_tokenizer_init=True, warmup=args.warmup,
                disable_overlap_schedule=args.disable_overlap_schedule)


def _generate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from jaxsgl.model.resolve import resolve_model_dir

    model_dir = resolve_model_dir(args.model)  # a GGUF file is converted once (progress bar on a TTY)
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxsgl-tokenizer")
    tokenized = pool.submit(_tokenize, model_dir, args.prompt, args.chat)
    import jax

    from jaxsgl.engine.engine import Engine

    eng = Engine(str(model_dir), **engine_options(args, jax.default_backend() == "cpu"))
    try:
        t_engine = time.perf_counter() - t0
        tok, ids, t_tok = tokenized.result()
        pool.shutdown()
        from jaxsgl.tokenizer import eos_token_ids

        stop_ids = [] if args.ignore_eos else sorted(eos_token_ids(tok, eng.cfg.eos_token_ids))
        t1 = time.perf_counter()
        out = eng.generate(input_ids=ids, sampling_params={
            "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "seed": args.seed, "ignore_eos": args.ignore_eos, "stop_token_ids": stop_ids})
        t_gen = time.perf_counter() - t1
    finally:
        eng.shutdown()
    out_ids = [t for t in out["output_ids"] if t not in stop_ids]
    sys.stdout.write(tok.decode(out_ids, skip_special_tokens=True) + "\n")
    sys.stdout.flush()
    log.info("model %s: engine ready in %.2fs (tokenizer %.2fs, in parallel), %d prompt + %d new tokens in "
             "%.2fs; whole command %.2fs", model_dir, t_engine, t_tok, len(ids), len(out_ids), t_gen,
             time.perf_counter() - t0)
    return 0


def _serve(argv: list[str]) -> int:
    """`jaxsgl serve ARGS`: jaxsgl.server.launch.main(ARGS), imported only now."""
    try:
        from jaxsgl.server.launch import main as launch_main
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith("jaxsgl.server"):
            print("jaxsgl: error: `jaxsgl serve` needs the HTTP server (jaxsgl.server.launch), which this "
                  f"installation does not have ({e})", file=sys.stderr)
            return 2
        raise
    return launch_main(argv)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxsgl", description="jaxsgl: structured LM programs on JAX")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt (one request through the Engine)")
    g.add_argument("--model", default=None, help="HF checkpoint dir or .gguf file (default: embedded SmolLM2-135M)")
    g.add_argument("--prompt", required=True)
    g.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--ignore-eos", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--dtype", default="auto", help="auto (the checkpoint's) | bfloat16 | float32")
    g.add_argument("--load-format", default="auto", help="auto | dummy")
    e = g.add_argument_group("engine options (defaults sized for one request)")
    e.add_argument("--attention-backend", default="auto", help="auto | reference | pallas | pallas_cudnn | ...")
    e.add_argument("--page-size", type=int, default=16)
    e.add_argument("--max-total-tokens", type=int, default=None,
                   help=f"KV pool in tokens (default {CLI_TOTAL_TOKENS}, more if the request needs it)")
    e.add_argument("--chunked-prefill-size", type=int, default=None,
                   help="prompt tokens per step (default: the page size on CPU, 512 elsewhere)")
    e.add_argument("--warmup", action="store_true", help="compile every step shape before generating")
    e.add_argument("--disable-overlap-schedule", action="store_true")
    g.set_defaults(func=_generate)
    sub.add_parser("serve", help="start the HTTP server (SGLang's native + OpenAI API); "
                                 "`jaxsgl serve --help` lists its options", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":  # every later argument (--help too) belongs to the server
        return _serve(argv[1:])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("jaxsgl").setLevel(logging.INFO)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxsgl: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
