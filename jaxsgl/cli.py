"""Command line: `jaxsgl generate ...`. Only generated text goes to stdout; logs go to stderr."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def _generate(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    from jaxsgl.engine.reference_generate import generate_ids
    from jaxsgl.model.compile_cache import enable_compilation_cache
    from jaxsgl.model.loader import load_model
    from jaxsgl.tokenizer import chat_prompt_ids, eos_token_ids, load_tokenizer

    enable_compilation_cache()
    cfg, weights, model_dir = load_model(args.model, dtype=args.dtype, load_format=args.load_format,
                                         seed=args.seed)
    tok = load_tokenizer(model_dir)
    t_load = time.perf_counter() - t0
    if args.chat:
        ids = chat_prompt_ids(tok, [{"role": "user", "content": args.prompt}])
    else:
        ids = tok.encode(args.prompt)
    t1 = time.perf_counter()
    out = generate_ids(cfg, weights, ids, args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                       seed=args.seed, eos_ids=eos_token_ids(tok, cfg.eos_token_ids), ignore_eos=args.ignore_eos)
    t_gen = time.perf_counter() - t1
    text = tok.decode(out, skip_special_tokens=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    logging.getLogger("jaxsgl").info("model %s: load %.2fs, %d prompt + %d new tokens in %.2fs",
                                     model_dir, t_load, len(ids), len(out), t_gen)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxsgl", description="jaxsgl: structured LM programs on JAX")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
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
    g.set_defaults(func=_generate)
    return p


def main(argv: list[str] | None = None) -> int:
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
