"""Command line: `jaxsgl generate ...` and `jaxsgl serve ...`. Only generated text goes to stdout.

`generate` runs one prompt through the Engine (bucketed step shapes, overlap scheduling) sized
for a single request: one sequence bucket, prefill in page-sized chunks (so every step of a
prompt, whatever its length, pads to the same token bucket), and a fixed KV pool (its shape is
part of the compiled step). With JAX's persistent compilation cache under `$JAXSGL_CACHE/xla`
(and jaxsgl's executable cache in it: `jaxsgl.model.compile_cache.persistent_jit`) a second run,
with any prompt length, reuses the first run's compiled step without tracing it again. The
tokenizer loads while the engine starts: in a forked child process on Linux (transformers'
import and the engine's start are both Python-bound, so a thread would take turns with the
engine on the GIL; a child runs on the other core), else on a thread. Logs and timings go to
stderr. Once the text is written, the process ends without the interpreter's teardown (JAX's
and transformers' modules take ~0.5 s to tear down).

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
    """(tokenizer, prompt ids, seconds): runs while the engine starts."""
    t0 = time.perf_counter()
    from jaxsgl.tokenizer import chat_prompt_ids, load_tokenizer

    tok = load_tokenizer(model_dir)
    ids = chat_prompt_ids(tok, [{"role": "user", "content": prompt}]) if chat else tok.encode(prompt)
    return tok, list(ids), time.perf_counter() - t0


def _tokenizer_eos(tok: Any) -> set[int]:
    """The tokenizer's part of jaxsgl.tokenizer.eos_token_ids (the config's eos ids are added by the caller)."""
    from jaxsgl.tokenizer import eos_token_ids

    return eos_token_ids(tok, ())


class _Tokenizer:
    """The prompt's ids, the eos id and the output's text, from a tokenizer loading in the
    background: a forked child process (Linux), or a thread elsewhere or if fork fails.
    Errors raised while loading or encoding are raised again here, by result()."""

    def __init__(self, model_dir: Any, prompt: str, chat: bool) -> None:
        self._pid = 0
        self._tok: Any = None
        self._replied = False
        # Fork only a process with no thread pools of its own yet (a first start's GGUF conversion
        # may have loaded torch): the child then only has the interpreter and what it imports.
        if sys.platform.startswith("linux") and "torch" not in sys.modules and "jax" not in sys.modules:
            try:
                self._fork(model_dir, prompt, chat)
                return
            except OSError as e:
                log.debug("tokenizer: fork failed (%s), loading it on a thread", e)
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="jaxsgl-tokenizer")
        self._future = self._pool.submit(_tokenize, model_dir, prompt, chat)

    def _fork(self, model_dir: Any, prompt: str, chat: bool) -> None:
        import pickle

        sys.stdout.flush()
        sys.stderr.flush()
        up_r, up_w = os.pipe()      # child -> parent
        down_r, down_w = os.pipe()  # parent -> child
        pid = os.fork()
        if pid == 0:  # the child: never returns
            status = 1
            try:
                os.close(up_r)
                os.close(down_w)
                with os.fdopen(up_w, "wb") as out, os.fdopen(down_r, "rb") as inp:
                    try:
                        tok, ids, seconds = _tokenize(model_dir, prompt, chat)
                        reply: tuple = ("ok", ids, sorted(_tokenizer_eos(tok)), seconds)
                    except Exception as e:  # noqa: BLE001 - raised again in the parent
                        reply, tok = ("error", type(e).__name__, str(e)), None
                    pickle.dump(reply, out)
                    out.flush()
                    while tok is not None:  # decode requests until the parent closes the pipe
                        try:
                            out_ids = pickle.load(inp)
                        except EOFError:
                            break
                        pickle.dump(tok.decode(out_ids, skip_special_tokens=True), out)
                        out.flush()
                status = 0
            finally:
                os._exit(status)
        os.close(up_w)
        os.close(down_r)
        self._pid, self._pickle = pid, pickle
        self._from_child, self._to_child = os.fdopen(up_r, "rb"), os.fdopen(down_w, "wb")

    def result(self) -> tuple[list[int], list[int], float]:
        """(prompt ids, the tokenizer's stop ids, seconds it took)."""
        if not self._pid:
            self._tok, ids, seconds = self._future.result()
            self._pool.shutdown()
            return ids, sorted(_tokenizer_eos(self._tok)), seconds
        try:
            reply = self._pickle.load(self._from_child)
            self._replied = True
        except EOFError:
            raise RuntimeError("the tokenizer process ended without a reply (see its error above)") from None
        if reply[0] == "error":
            _, kind, message = reply
            raise (ValueError if kind == "ValueError" else FileNotFoundError if kind == "FileNotFoundError"
                   else RuntimeError)(message if kind in ("ValueError", "FileNotFoundError") else
                                      f"tokenizer: {kind}: {message}")
        return reply[1], reply[2], reply[3]

    def decode(self, ids: list[int]) -> str:
        if not self._pid:
            return self._tok.decode(ids, skip_special_tokens=True)
        self._pickle.dump(list(ids), self._to_child)
        self._to_child.flush()
        return self._pickle.load(self._from_child)

    def close(self) -> None:
        """Stop the child (at once if its reply was never read: the engine failed) and reap it."""
        if self._pid:
            if not self._replied:
                import signal

                os.kill(self._pid, signal.SIGKILL)
            self._to_child.close()
            self._from_child.close()
            os.waitpid(self._pid, 0)
            self._pid = 0


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
    tokenizer = _Tokenizer(model_dir, args.prompt, args.chat)
    try:
        import jax

        from jaxsgl.engine.engine import Engine

        t_import = time.perf_counter() - t0
        eng = Engine(str(model_dir), **engine_options(args, jax.default_backend() == "cpu"))
        try:
            t_engine = time.perf_counter() - t0
            ids, tok_eos, t_tok = tokenizer.result()
            stop_ids = [] if args.ignore_eos else sorted(set(eng.cfg.eos_token_ids) | set(tok_eos))
            t1 = time.perf_counter()
            out = eng.generate(input_ids=ids, sampling_params={
                "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p,
                "seed": args.seed, "ignore_eos": args.ignore_eos, "stop_token_ids": stop_ids})
            t_gen = time.perf_counter() - t1
        finally:
            eng.shutdown()
        out_ids = [t for t in out["output_ids"] if t not in stop_ids]
        text = tokenizer.decode(out_ids)
    finally:
        tokenizer.close()
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    log.info("model %s: engine ready in %.2fs (%.2fs of it importing jax and the engine; tokenizer %.2fs, in "
             "parallel), %d prompt + %d new tokens in %.2fs; whole command %.2fs", model_dir, t_engine, t_import,
             t_tok, len(ids), len(out_ids), t_gen, time.perf_counter() - t0)
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
    """`jaxsgl ARGV`. As the program (argv None: the console script, `python -m jaxsgl.cli`),
    `generate` ends the process itself once its text is written (see the module docstring)."""
    as_program = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":  # every later argument (--help too) belongs to the server
        return _serve(argv[1:])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s: %(message)s")
    logging.getLogger("jaxsgl").setLevel(logging.INFO)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    args = build_parser().parse_args(argv)
    try:
        rc = args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"jaxsgl: error: {e}", file=sys.stderr)
        rc = 2
    if as_program and args.func is _generate:
        _exit_now(rc)
    return rc


def _exit_now(rc: int) -> None:
    """End the process without the interpreter's teardown: `generate` has written and flushed what
    it had to, and nothing it started is left running (engine thread joined, tokenizer child reaped)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(main())
