"""Every frontend primitive on the real engine: the default model and a tiny random model (CPU, greedy)."""
from __future__ import annotations

import shutil
from pathlib import Path

import json
import re

import pytest

import jaxsgl as sgl
from jaxsgl.lang.backend.runtime import common_prefix_len


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def make_tiny_checkpoint(out: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer Llama with SmolLM2's vocabulary, plus SmolLM2's tokenizer files."""
    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=2048, tie_word_embeddings=False, bos_token_id=1,
                                   eos_token_id=2, rms_norm_eps=1e-5)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():  # spread the logits so greedy choices are not near-ties
        model.lm_head.weight.mul_(50.0)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    return out


@pytest.fixture(scope="module", params=["default", "tiny"])
def runtime(request, default_model_dir, tmp_path_factory):
    path = None
    if request.param == "tiny":
        path = str(make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_smol_vocab"), default_model_dir))
    rt = sgl.Runtime(path, dtype="float32", max_total_tokens=8192)
    yield rt
    rt.shutdown()


def greedy(rt, prompt: str, n: int) -> str:
    return rt.engine.generate(prompt, {"max_new_tokens": n, "temperature": 0})["text"]


def test_fork_join_gathers_variables(runtime):
    @sgl.function
    def prog(s):
        s += "Two facts about the sea:\n"
        forks = s.fork(2)
        forks += lambda i: f"{i + 1}."
        forks += sgl.gen("fact", max_tokens=4)
        forks.join()

    state = prog.run(temperature=0, backend=runtime)
    assert state.error() is None
    base = "Two facts about the sea:\n"
    assert state["fact"] == [greedy(runtime, base + f"{i + 1}.", 4) for i in range(2)]


@pytest.mark.parametrize("method", [sgl.token_length_normalized, sgl.greedy_token_selection,
                                    sgl.unconditional_likelihood_normalized])
def test_select_matches_logprobs_from_the_engine(runtime, method):
    prompt = "Q: What color is the sky on a clear day?\nA:"
    choices = [" blue", " green", " bright blue sky"]

    @sgl.function
    def prog(s):
        s += prompt + sgl.select("c", choices=choices, choices_method=method)

    state = prog.run(backend=runtime)
    assert state.error() is None
    eng, tok = runtime.engine, runtime.tokenizer
    prefix = tok.encode(prompt)
    cond, uncond = [], []
    for c in choices:  # one request per choice, straight to the engine
        ids = tok.encode(prompt + c)
        start = common_prefix_len(prefix, ids)
        out = eng.generate(input_ids=ids, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                           logprob_start_len=start)
        cond.append([lp for lp, _, _ in out["meta_info"]["input_token_logprobs"]])
        own = ids[start:]
        out = eng.generate(input_ids=own, sampling_params={"max_new_tokens": 0}, return_logprob=True,
                           logprob_start_len=0)
        uncond.append([lp or 0.0 for lp, _, _ in out["meta_info"]["input_token_logprobs"]])
    means = [sum(x) / len(x) for x in cond]
    meta = state.get_meta_info("c")
    assert meta["normalized_prompt_logprobs"] == pytest.approx(means, abs=2e-3)
    decision = method(choices=choices, normalized_prompt_logprobs=means,
                      input_token_logprobs=[[(lp, 0, None) for lp in x] for x in cond], output_token_logprobs=[],
                      unconditional_token_logprobs=[[(lp, 0, None) for lp in x] for x in uncond]).decision
    assert state["c"] == decision
    if method is sgl.token_length_normalized:
        assert state["c"] == choices[max(range(len(choices)), key=lambda i: means[i])]


def test_roles_render_like_apply_chat_template(runtime):
    tok = runtime.tokenizer

    @sgl.function
    def chat(s):
        s += sgl.system("You answer in one word.")
        s += sgl.user("Capital of France?")
        s += sgl.assistant(sgl.gen("a", max_tokens=4))
        with s.user():
            s += "And of Italy?"
        s += sgl.assistant_begin() + sgl.gen("b", max_tokens=4) + sgl.assistant_end()

    state = chat.run(temperature=0, backend=runtime)
    msgs = state.messages()
    assert state.error() is None and [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert state.text() == tok.apply_chat_template(msgs, tokenize=False)
    gen_prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    assert state["a"] == greedy(runtime, gen_prompt, 4)


def test_stop_strings(runtime):
    prompt = "List three fruits, one per line:\n"
    full = greedy(runtime, prompt, 12)
    stops = [full[k:k + 2] for k in range(len(full) // 2, len(full) - 1) if full.index(full[k:k + 2]) > 0]
    assert stops, full
    stop = stops[0]

    @sgl.function
    def prog(s):
        s += prompt + sgl.gen("x", max_tokens=12, stop=stop)

    state = prog.run(temperature=0, backend=runtime)
    assert state["x"] == full[:full.index(stop)]
    assert state.get_meta_info("x")["finish_reason"]["type"] == "stop"


def test_run_batch_equals_one_by_one(runtime):
    """64 programs on the tiny model; 16 on the default one (its CPU steps are ~0.2 s each)."""
    @sgl.function
    def prog(s, topic):
        s += "You are a helpful assistant that writes very short, plain sentences about a topic. " * 2
        s += "Topic: " + topic + "\nSentence:"
        s += sgl.gen("out", max_tokens=2)

    n = 16 if runtime.engine.cfg.hidden_size > 128 else 64
    topics = [{"topic": f"item number {i}"} for i in range(n)]
    batch = prog.run_batch(topics, temperature=0, num_threads=n, backend=runtime)
    assert all(s.error() is None for s in batch)
    one = [prog.run(temperature=0, backend=runtime, **t)["out"] for t in topics]
    assert [s["out"] for s in batch] == one


def test_streamed_text_equals_non_streamed(runtime):
    @sgl.function
    def prog(s):
        s += sgl.user("Say something about the moon.")
        s += sgl.assistant(sgl.gen("a", max_tokens=8))

    ref = prog.run(temperature=0, backend=runtime)
    st = prog.run(temperature=0, stream=True, backend=runtime)
    assert "".join(st.text_iter("a")) == ref["a"]
    assert st.text() == ref.text()


def test_program_that_raises_is_reported(runtime):
    @sgl.function
    def bad(s):
        s += "Hello" + sgl.gen("a", max_tokens=2)
        raise RuntimeError("user bug")

    @sgl.function
    def too_long(s):
        s += "Hi" + sgl.gen("a", max_tokens=10 ** 6)  # the engine rejects it

    with pytest.raises(RuntimeError, match="user bug"):  # SGLang's run() re-raises the body's error
        bad.run(backend=runtime)
    with pytest.warns(RuntimeWarning, match="max_new_tokens|context"):  # a failing engine call: warned, kept
        state = too_long.run(backend=runtime, stream=True)
        assert list(state.text_iter("a")) == []
        assert isinstance(state.error(), ValueError)


def test_gen_int_regex_and_json_schema_on_the_engine(runtime):
    @sgl.function
    def prog(s):
        s += "Number: " + sgl.gen("n", max_tokens=6, regex=r"[0-9]+")
        s += "\nAge: " + sgl.gen_int("age", max_tokens=6)
        s += "\nJSON: " + sgl.gen("j", max_tokens=40, json_schema={"type": "object", "properties": {
            "ok": {"type": "boolean"}}, "required": ["ok"]})

    state = prog.run(backend=runtime, temperature=0)
    assert state.error() is None
    assert re.fullmatch(r"[0-9]+", state["n"]) and int(state["age"].strip()) >= 0
    assert isinstance(json.loads(state["j"])["ok"], bool)
