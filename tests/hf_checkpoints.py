"""Tiny random Hugging Face checkpoints of every supported architecture (made with transformers + torch)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

BASE = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            max_position_embeddings=512, rms_norm_eps=1e-5)

# name -> (transformers config class name, config overrides)
ARCH_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama2-mha-hd64-untied": ("LlamaConfig", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2,
                                                   tie_word_embeddings=False)),
    "llama3-gqa2-rope-llama3": ("LlamaConfig", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                                    head_dim=64, rope_theta=500000.0, tie_word_embeddings=False,
                                                    rope_scaling=dict(rope_type="llama3", factor=8.0,
                                                                      low_freq_factor=1.0, high_freq_factor=4.0,
                                                                      original_max_position_embeddings=64))),
    "llama-gqa4-hd128-bias": ("LlamaConfig", dict(hidden_size=256, num_attention_heads=4, num_key_value_heads=1,
                                                  head_dim=128, attention_bias=True, tie_word_embeddings=True)),
    "smollm2-gqa4-tied": ("LlamaConfig", dict(hidden_size=64, num_attention_heads=4, num_key_value_heads=1,
                                              head_dim=16, tie_word_embeddings=True)),
    "mistral-gqa2-window": ("MistralConfig", dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2,
                                                  head_dim=64, sliding_window=12, tie_word_embeddings=False)),
    "qwen2-gqa2-bias": ("Qwen2Config", dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=1,
                                            tie_word_embeddings=True)),
    "qwen3-gqa4-qknorm": ("Qwen3Config", dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=1,
                                              head_dim=128, tie_word_embeddings=False)),
}


def make_hf_checkpoint(name: str, out_dir: Path, seed: int = 0) -> Path:
    """Save a random fp32 model of ARCH_CASES[name] to out_dir; return out_dir."""
    import torch
    import transformers

    cls_name, overrides = ARCH_CASES[name]
    cfg = getattr(transformers, cls_name)(**{**BASE, **overrides})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():  # biases and norms default to 0 / 1: randomise them so they are tested
        for n, p in model.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
