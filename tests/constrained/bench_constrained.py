"""Measurements for docs/constrained.md (not a test): compile times, table sizes, GIL, EBNF mask cost.

    .venv/bin/python tests/constrained/bench_constrained.py [--regex N] [--schemas N]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from corpus import CHARACTER_CARD, regex_corpus, schema_corpus  # noqa: E402

from jaxsgl.constrained import ConstraintSpec, EbnfGrammar, TokenVocab, compile_constraint  # noqa: E402


def _load_vocab() -> TokenVocab:
    from jaxsgl.model.resolve import resolve_model_dir
    from jaxsgl.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_dir(None))
    return TokenVocab.from_tokenizer(tok, 49152, [tok.eos_token_id])


def _percentiles(times: list[float]) -> str:
    arr = np.array(times) * 1e3
    return f"p50 {np.percentile(arr, 50):.1f} ms, p99 {np.percentile(arr, 99):.1f} ms, max {arr.max():.1f} ms"


def bench_compile(vocab: TokenVocab, specs: list[ConstraintSpec], label: str) -> None:
    """Wall and CPU time per compile (CPU time is less disturbed by other load on a shared machine)."""
    walls, cpus, sizes = [], [], []
    for spec in specs:
        start, cpu = time.perf_counter(), time.process_time()
        fsm = compile_constraint(spec, vocab)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        sizes.append(fsm.nbytes)
    print(f"{label}: n={len(specs)} wall {_percentiles(walls)}; cpu {_percentiles(cpus)}; "
          f"nbytes median {statistics.median(sizes) / 1e6:.2f} MB, max {max(sizes) / 1e6:.2f} MB")


def bench_gil(vocab: TokenVocab, spec: ConstraintSpec) -> None:
    """Pauses of a busy Python loop on this thread while spec compiles: idle, on a thread, in a process."""
    from jaxsgl.constrained import GrammarCompiler

    def loop_while(future) -> list[float]:
        gaps, last = [], time.perf_counter()
        while not future.done():
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            sum(range(50))
        return gaps

    from concurrent.futures import ThreadPoolExecutor

    idle = ThreadPoolExecutor(1)
    report = {"idle (sleep)": loop_while(idle.submit(time.sleep, 2.0))}
    for label, processes in (("thread", False), ("process", True)):
        compiler = GrammarCompiler(vocab, processes=processes)
        compiler.warm_up().result()
        report[label] = loop_while(compiler.submit(spec))
        compiler.shutdown()
    idle.shutdown()
    for label, gaps in report.items():
        gaps.sort()
        print(f"GIL, compile on a {label}: main-loop max pause {gaps[-1] * 1e3:.0f} ms, pauses > 20 ms add up to "
              f"{sum(g for g in gaps if g > 0.02) * 1e3:.0f} ms, top 5 {[round(g * 1e3) for g in gaps[-5:]]}")


def bench_ebnf(vocab: TokenVocab) -> None:
    grammar = EbnfGrammar('start: %json {"type": "object", "properties": {"name": {"type": "string"}, '
                          '"args": {"type": "array", "items": {"type": "integer"}}}, "required": ["name", "args"]}',
                          vocab)
    text = '{"name": "get_weather_for_city", "args": [1, 22, 333, 4444, 55555, 666666]}'
    ids = vocab.encode(text)
    out = np.zeros((vocab.vocab_size + 31) // 32, np.uint32)
    per_token = []
    for _ in range(5):
        matcher = grammar.matcher()
        for t in ids:
            start = time.perf_counter()
            matcher.fill_mask(out)
            per_token.append(time.perf_counter() - start)
            matcher.consume([t])
    arr = np.array(per_token) * 1e6
    print(f"EBNF (llguidance) mask at vocab {vocab.vocab_size}: p50 {np.percentile(arr, 50):.0f} us/token, "
          f"mean {arr.mean():.0f} us, p99 {np.percentile(arr, 99):.0f} us over {arr.size} tokens")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--regex", type=int, default=300)
    parser.add_argument("--schemas", type=int, default=100)
    args = parser.parse_args()
    vocab = _load_vocab()
    compile_constraint(ConstraintSpec("regex", "warm"), vocab)  # build the outlines vocabulary once
    card = ConstraintSpec("json_schema", json.dumps(CHARACTER_CARD))
    fsm = compile_constraint(card, vocab)
    bench_compile(vocab, [card] * 5, "character card")
    print(f"character card: {fsm.num_states} states, {fsm.num_transitions} transitions, nbytes {fsm.nbytes / 1e6:.2f} MB")
    bench_compile(vocab, [ConstraintSpec("regex", r) for r in regex_corpus(args.regex)], "regex corpus")
    bench_compile(vocab, [ConstraintSpec("json_schema", json.dumps(s)) for s in schema_corpus(args.schemas)],
                  "schema corpus")
    big = dict(CHARACTER_CARD, properties=dict(CHARACTER_CARD["properties"], bio={"type": "string", "maxLength": 40}))
    bench_gil(vocab, ConstraintSpec("json_schema", json.dumps(big)))
    bench_ebnf(vocab)


if __name__ == "__main__":
    main()
