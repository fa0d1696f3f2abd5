"""Logits and greedy tokens against Hugging Face transformers (PyTorch, CPU, fp32)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from hf_checkpoints import ARCH_CASES
from jaxsgl.engine.reference_generate import generate_ids
from jaxsgl.model.forward import init_kv_cache, make_forward, step_to_device
from jaxsgl.model.loader import load_model
from jaxsgl.model.step_input import make_step_input

PROMPT_LEN = 32
NEW_TOKENS = 16


def jax_logits(cfg, weights, ids: list[int], page_size: int = 16) -> np.ndarray:
    """fp32 logits of every prompt token, computed in one prefill step."""
    n_pages = -(-len(ids) // page_size)
    kv = init_kv_cache(cfg, n_pages + 1, page_size, jnp.float32)
    step = make_step_input([(ids, 0, list(range(1, n_pages + 1)))], page_size)
    logits, _ = make_forward(cfg, all_logits=True)(weights, kv, step_to_device(step))
    return np.asarray(logits)


def hf_model(path, **kw):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                             attn_implementation="eager", **kw).eval()


def hf_greedy(model, ids: list[int], n: int) -> list[int]:
    model.generation_config.eos_token_id = None  # generate exactly n tokens, like --ignore-eos
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("name", sorted(ARCH_CASES))
def test_tiny_random_checkpoint_matches_transformers(name, hf_checkpoint):
    path = hf_checkpoint(name)
    cfg, weights, _ = load_model(path, dtype="float32")
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, PROMPT_LEN).tolist()
    model = hf_model(path)
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    got = jax_logits(cfg, weights, ids)
    assert np.abs(got - ref).max() <= 1e-3
    assert generate_ids(cfg, weights, ids, NEW_TOKENS, ignore_eos=True) == hf_greedy(model, ids, NEW_TOKENS)


def test_default_model_gguf_matches_transformers(default_model):
    from jaxsgl.model.resolve import default_model_path

    cfg, weights, model_dir = default_model
    gguf = default_model_path()
    model = hf_model(gguf.parent, gguf_file=gguf.name)
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok.encode("The three primary colors are red, yellow and blue. Mixing red and blue gives")[:PROMPT_LEN]
    ids = (ids * 4)[:PROMPT_LEN]
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(jax_logits(cfg, weights, ids) - ref).max() <= 1e-3
    assert generate_ids(cfg, weights, ids, NEW_TOKENS, ignore_eos=True) == hf_greedy(model, ids, NEW_TOKENS)


def test_gguf_tokenizer_matches_transformers_gguf_tokenizer(default_model_dir):
    from jaxsgl.model.resolve import default_model_path

    gguf = default_model_path()
    ours = transformers.AutoTokenizer.from_pretrained(str(default_model_dir))
    ref = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    texts = ["Hello world!", "  leading spaces, café, naïve — 12345 ½", "def f(x):\n\treturn x**2  # ok",
             "<|im_start|>user\nhi<|im_end|>", "日本語のテキスト and emoji 🎉"]
    for t in texts:
        assert ours.encode(t) == ref.encode(t)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ours.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == \
        ref.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert (ours.eos_token, ours.bos_token) == (ref.eos_token, ref.bos_token)
