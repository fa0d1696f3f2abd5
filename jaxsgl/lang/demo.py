"""A frontend program on the default model: multi-turn chat, a forked few-shot question, a select.

    python -m jaxsgl.lang.demo            # the embedded SmolLM2-135M-Instruct on CPU/GPU
    python -m jaxsgl.lang.demo --model /path/to/hf_checkpoint --max-tokens 32

Prints each answer and the engine's prefix-cache hit rate.

The engine is sized for this small program (DEMO_ENGINE): a 1024-token KV pool, at most 4
sequences per step and prefill chunks of 12 tokens, so that every step pads to one shape
(16 tokens x 4 sequences x one page-table width) and the whole demo compiles the model step
twice (greedy, and with the input logprobs `select` scores choices by) instead of once per
prompt length and batch size; with JAX's persistent compilation cache a second run compiles
nothing. --engine-defaults runs it on the Engine's own defaults instead.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import Optional

import jaxsgl as sgl

# One step shape for the whole program: max_running_requests + chunked_prefill_size tokens.
DEMO_ENGINE = dict(max_total_tokens=1024, max_running_requests=4, seq_buckets=[4], page_size=4,
                   chunked_prefill_size=12, max_prefill_tokens=12)

FEW_SHOT = ("Answer with a single word.\n"
            "Q: What is the opposite of hot?\nA: cold\n"
            "Q: What color is grass?\nA: green\n"
            "Q: What do bees make?\nA: honey\n")


@sgl.function
def multi_turn_chat(s, question_1, question_2, max_tokens=24):
    s += sgl.system("You are a helpful assistant. Keep answers short.")
    s += sgl.user(question_1)
    s += sgl.assistant(sgl.gen("answer_1", max_tokens=max_tokens))
    s += sgl.user(question_2)
    s += sgl.assistant(sgl.gen("answer_2", max_tokens=max_tokens))


@sgl.function
def few_shot_fork(s, questions):
    s += FEW_SHOT  # committed once by fork(); every branch reuses its KV
    forks = s.fork(len(questions))
    forks += lambda i: "Q: " + questions[i] + "\nA:"
    forks += sgl.gen("answer", max_tokens=4, stop="\n")
    forks.join()


@sgl.function
def judge(s, statement):
    s += sgl.user("Is this statement true or false? " + statement)
    s += sgl.assistant(sgl.select("verdict", choices=["True", "False"]))


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2-135M-Instruct)")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--engine-defaults", action="store_true", help="the Engine's default options, not DEMO_ENGINE")
    args = ap.parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # its "PyTorch was not found" note is not for us

    runtime = sgl.Runtime(args.model, **({} if args.engine_defaults else DEMO_ENGINE))
    sgl.set_default_backend(runtime)
    try:
        t0 = time.perf_counter()
        chat = multi_turn_chat.run(question_1="What is the capital of France?",
                                   question_2="And what is it famous for?", max_tokens=args.max_tokens,
                                   temperature=0)
        for m in chat.messages():
            print(f"[{m['role']}] {m['content']}")
        fork = few_shot_fork.run(questions=["What is frozen water called?", "What animal says moo?",
                                            "What is the opposite of day?"], temperature=0)
        print("few-shot answers:", [a.strip() for a in fork["answer"]])
        verdict = judge.run(statement="The sun rises in the east.")
        print("verdict:", verdict["verdict"], verdict.get_meta_info("verdict")["normalized_prompt_logprobs"])
        errors = [st.error() for st in (chat, fork, verdict) if st.error() is not None]
        if errors:
            print("errors:", errors)
        stats = runtime.cache_stats()
        print(f"cache hit rate {stats.get('hit_rate', 0.0):.1%} "
              f"({stats.get('cached_prompt_tokens', '?')} of {stats.get('prompt_tokens', '?')} prompt tokens); "
              f"{time.perf_counter() - t0:.1f} s")
    finally:
        runtime.shutdown()


if __name__ == "__main__":
    main()
