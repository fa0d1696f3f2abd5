"""Config parsing, the abstract weight description, dummy loading and loader errors."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxsgl.model.config import ModelConfig
from jaxsgl.model.loader import load_model, load_weights
from jaxsgl.model.step_input import make_step_input
from jaxsgl.model.weights import abstract_weights, param_count, weight_specs

LLAMA_31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096,
    "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 131072, "tie_word_embeddings": False,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16",
}


def test_llama31_8b_description_has_8b_params_and_llama3_rope():
    cfg = ModelConfig.from_hf_dict(LLAMA_31_8B)
    assert cfg.rope_scaling.rope_type == "llama3" and cfg.eos_token_ids == (128001, 128008, 128009)
    specs = weight_specs(cfg, jnp.bfloat16)
    assert param_count(specs) == 8_030_261_248
    shapes = abstract_weights(specs)
    assert shapes.layers[0].wqkv.shape == (4096, 4096 + 2 * 1024) and shapes.lm_head.shape == (4096, 128256)


def test_dummy_load_needs_only_a_config(tmp_path):
    small = {**LLAMA_31_8B, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}
    (tmp_path / "config.json").write_text(json.dumps(small))
    cfg, w, _ = load_model(tmp_path, load_format="dummy", dtype="bfloat16")
    assert w.embed.dtype == jnp.bfloat16 and w.layers[1].w_down.shape == (128, 64)
    assert float(jnp.std(w.layers[0].wqkv.astype(jnp.float32))) > 0


@pytest.mark.parametrize("bad,msg", [({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported"),
                                     ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "yarn")])
def test_unsupported_configs_raise(bad, msg):
    with pytest.raises(ValueError, match=msg):
        ModelConfig.from_hf_dict({**LLAMA_31_8B, **bad})


def test_loader_rejects_wrong_shapes(hf_checkpoint, tmp_path):
    src = hf_checkpoint("qwen2-gqa2-bias")
    cfg = ModelConfig.from_dir(src)
    wrong = ModelConfig(**{**cfg.__dict__, "intermediate_size": cfg.intermediate_size + 1})
    with pytest.raises(ValueError, match="checkpoint shape"):
        load_weights(src, wrong, "float32")


def test_step_input_check_catches_inconsistent_offsets():
    step = make_step_input([([1, 2, 3], 0, [1]), ([4], 5, [2])], 16, num_tokens=8, num_seqs=4)
    step.check()
    assert step.query_start.tolist() == [0, 3, 4, 4, 4] and step.slots[3] == 2 * 16 + 5
    step.kv_lens[1] = 0
    with pytest.raises(ValueError, match="kv_lens"):
        step.check()


def test_loading_holds_one_tensor_at_a_time_not_the_model(tmp_path):
    """Peak host allocations while loading stay near the largest tensor, far below the model's size."""
    import tracemalloc

    import torch
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=12,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path, max_shard_size="2MB")
    assert len(list(tmp_path.glob("*.safetensors"))) > 1  # sharded, with an index
    total = sum(p.numel() * 4 for p in transformers.AutoModelForCausalLM.from_config(cfg).parameters())
    tracemalloc.start()
    _, w, _ = load_model(tmp_path, dtype="float32")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    largest = max(x.size * 4 for x in jax.tree_util.tree_leaves(w))
    assert peak < 6 * largest < total / 4, (peak, largest, total)  # a few tensors in flight, never the model
