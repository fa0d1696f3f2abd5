"""Engine test fixtures: a tiny random Llama with the default model's tokenizer and peaky logits."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, default_model_dir) -> Path:
    """2-layer Llama, vocab 49152 + SmolLM2's tokenizer. initializer_range 0.2 gives logit gaps far above
    float noise, so greedy outputs do not depend on batch composition."""
    import transformers

    out = tmp_path_factory.mktemp("tiny_llama")
    cfg = transformers.LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=1024, tie_word_embeddings=True, initializer_range=0.2,
                                   bos_token_id=1, eos_token_id=2)
    try:
        import torch
    except ImportError:  # CI's Python 3.12 leg (setup.sh --test-core) has no torch: PyPI only has its CUDA build
        save_random_llama(cfg, out)
    else:
        torch.manual_seed(0)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (Path(default_model_dir) / f).exists():
            shutil.copy(Path(default_model_dir) / f, out / f)
    return out


def save_random_llama(cfg, out: Path, seed: int = 0) -> None:
    """The checkpoint `AutoModelForCausalLM.from_config(cfg).save_pretrained(out)` writes, made with numpy:
    HF's Llama init (matrices and embeddings ~ N(0, initializer_range), unit norms), fp32, tied embeddings."""
    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    H, D = cfg.hidden_size, cfg.head_dim

    def mat(*shape):
        return rng.normal(0.0, cfg.initializer_range, shape).astype(np.float32)

    tensors = {"model.embed_tokens.weight": mat(cfg.vocab_size, H), "model.norm.weight": np.ones(H, np.float32)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        tensors |= {p + "self_attn.q_proj.weight": mat(cfg.num_attention_heads * D, H),
                    p + "self_attn.k_proj.weight": mat(cfg.num_key_value_heads * D, H),
                    p + "self_attn.v_proj.weight": mat(cfg.num_key_value_heads * D, H),
                    p + "self_attn.o_proj.weight": mat(H, cfg.num_attention_heads * D),
                    p + "mlp.gate_proj.weight": mat(cfg.intermediate_size, H),
                    p + "mlp.up_proj.weight": mat(cfg.intermediate_size, H),
                    p + "mlp.down_proj.weight": mat(H, cfg.intermediate_size),
                    p + "input_layernorm.weight": np.ones(H, np.float32),
                    p + "post_attention_layernorm.weight": np.ones(H, np.float32)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.dtype = "float32"
    cfg.save_pretrained(out)


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from jaxsgl.engine.engine import Engine

    """The synchronous engine (no overlap): the reference the overlapped default is compared with."""
    eng = Engine(str(tiny_model_dir), dtype="float32", debug_check_integrity=True, chunked_prefill_size=64,
                 disable_overlap_schedule=True)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="session")
def workload():
    from tests.engine.workload import mixed_workload

    return mixed_workload()


@pytest.fixture(scope="session")
def baseline(tiny_model_dir, workload):
    """Greedy outputs (and cache stats) of the workload with the cache on, page 16, chunking: the reference."""
    from tests.engine.workload import CONFIGS, run

    return run(tiny_model_dir, workload, disable_overlap_schedule=True, **CONFIGS["cache-on-page16-chunked"])
