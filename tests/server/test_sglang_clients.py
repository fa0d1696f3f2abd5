"""SGLang's own client code against the server, unmodified: the frontend through `sgl.RuntimeEndpoint`
(gen, select, fork, streaming) and `python -m sglang.bench_serving` (native and OpenAI backends)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import assert_no_leaked_pages

import sglang as sgl  # scripts/setup.sh --test installs it (--no-deps; see docs/server.md)
HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def endpoint(served):
    return sgl.RuntimeEndpoint(served.url)


def greedy(engine, text, n):
    return engine.generate(text, {"max_new_tokens": n, "temperature": 0})["text"]


def test_gen_and_stream(served, endpoint):
    @sgl.function
    def prog(s, q):
        s += "Q: " + q + "\nA:"
        s += sgl.gen("a", max_tokens=8, temperature=0)

    state = prog.run(q="Why is the sky blue?", backend=endpoint)
    assert state["a"] == greedy(served.engine, "Q: Why is the sky blue?\nA:", 8)
    streamed = prog.run(q="Why is the sky blue?", backend=endpoint, stream=True)
    pieces = list(streamed.text_iter("a"))
    assert "".join(pieces) == state["a"]


def test_select_matches_engine_logprobs(served, endpoint):
    prefix = "Q: Is fire hot or cold?\nA:"
    choices = [" hot", " cold", " lukewarm"]

    @sgl.function
    def prog(s):
        s += prefix + sgl.select("c", choices=choices)

    state = prog.run(backend=endpoint)
    assert state["c"] in choices
    # token_length_normalized, SGLang's default: the mean logprob of each choice's tokens
    eng, tok = served.engine, served.engine.tokenizer
    n_prefix = len(tok.encode(prefix))
    scores = []
    for c in choices:
        out = eng.generate(prefix + c, {"max_new_tokens": 0}, return_logprob=True,
                           logprob_start_len=max(n_prefix - 2, 0))
        lps = [lp for lp, _, _ in out["meta_info"]["input_token_logprobs"] if lp is not None]
        scores.append(sum(lps) / len(lps))
    assert state["c"] == choices[scores.index(max(scores))] or len(set(round(s, 4) for s in scores)) < 3


def test_fork_join(served, endpoint):
    base = "Two facts about the sea:\n"

    @sgl.function
    def prog(s):
        s += base
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"{i + 1}." + sgl.gen("fact", max_tokens=5, temperature=0)
        s += "A:" + forks[0]["fact"] + " B:" + forks[1]["fact"]

    state = prog.run(backend=endpoint)
    facts = [greedy(served.engine, base + f"{i + 1}.", 5) for i in range(2)]
    assert state.text() == base + f"A:{facts[0]} B:{facts[1]}"
    endpoint.flush_cache()
    assert_no_leaked_pages(served.engine)


@pytest.mark.parametrize("backend", ["sglang", "sglang-oai"])
def test_bench_serving_smoke(served, backend, tmp_path):
    out = tmp_path / "bench.jsonl"
    cmd = [sys.executable, str(HERE / "run_bench_serving.py"), "--backend", backend, "--base-url", served.url,
           "--dataset-name", "random-ids", "--num-prompts", "4", "--random-input-len", "24",
           "--random-output-len", "6", "--random-range-ratio", "1.0", "--request-rate", "inf",
           "--disable-tqdm", "--output-file", str(out), "--warmup-requests", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}  # no hub: fail fast, not retry
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Successful requests:                     4" in proc.stdout, proc.stdout[-3000:]
    result = json.loads(out.read_text().splitlines()[-1])
    assert result["completed"] == 4 and result["total_output_tokens"] == 24
    assert_no_leaked_pages(served.engine)
