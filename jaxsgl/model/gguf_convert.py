"""Convert a GGUF file (llama / qwen2 / qwen3) into a cached HF checkpoint directory.

The `gguf` package reads and dequantises the tensors (fp32 out, exact for every
quantisation type); the tokenizer and chat template are converted by
`transformers.AutoTokenizer(..., gguf_file=...)`. The result lands in
`$JAXSGL_CACHE` (default ~/.cache/jaxsgl) keyed by the file's name, size and mtime,
so the second start skips the conversion and loads safetensors directly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

ARCHS = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
LAYER_NAMES = {  # GGUF blk.N.<name> -> HF model.layers.N.<name>
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id",
                  "pad_token": "padding_token_id"}
GLOBAL_NAMES = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                "output.weight": "lm_head.weight"}


def cache_root() -> Path:
    return Path(os.environ.get("JAXSGL_CACHE", Path.home() / ".cache" / "jaxsgl"))


def converted_dir(gguf_path: str | Path) -> Path:
    """Where the HF conversion of gguf_path lives (it may not exist yet)."""
    p = Path(gguf_path).resolve()
    st = p.stat()
    key = hashlib.sha1(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_root() / f"{p.stem}-{key}"


def _unpermute(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation (interleaved rope pairs -> rotate-half halves)."""
    return w.reshape(n_heads, w.shape[0] // n_heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(fields: dict, arch: str, tensor_names: set[str]) -> dict:
    a = arch
    get = lambda k, default=None: fields.get(f"{a}.{k}", default)
    if get("rope.scaling.type") not in (None, "none"):
        raise ValueError(f"GGUF rope scaling {get('rope.scaling.type')!r} is not supported")
    n_heads = int(get("attention.head_count"))
    d = int(get("embedding_length"))
    cfg = {
        "architectures": [ARCHS[a]],
        "model_type": a,
        "vocab_size": int(get("vocab_size") or len(fields["tokenizer.ggml.tokens"])),
        "hidden_size": d,
        "intermediate_size": int(get("feed_forward_length")),
        "num_hidden_layers": int(get("block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(get("attention.head_count_kv", n_heads)),
        "head_dim": int(get("attention.key_length") or d // n_heads),
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "torch_dtype": "float32",
        "hidden_act": "silu",
    }
    if a == "qwen2":
        cfg["use_sliding_window"] = False
    return cfg


def gguf_tokenizer(fields: dict) -> Any:
    """The HF fast tokenizer described by a GGUF file's metadata.

    transformers' own GGUF tokenizer builders do the conversion (the same code as
    `AutoTokenizer.from_pretrained(..., gguf_file=...)`, whose file reader needs torch);
    the metadata comes from the `gguf` package, so no torch is needed here.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer)

    groups = {group: {name: fields[f"tokenizer.{key}"] for key, name in renames.items()
                      if f"tokenizer.{key}" in fields}
              for group, renames in GGUF_TOKENIZER_MAPPING.items()}
    tok_dict, tok_config = groups["tokenizer"], groups["tokenizer_config"]
    for name, key in SPECIAL_TOKENS.items():
        token_id = fields.get(f"tokenizer.ggml.{key}")
        tok_config[name] = tok_dict["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(fields["general.architecture"], tok_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tok_config, **extra)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write config.json, model.safetensors (fp32) and the tokenizer files; return the directory.

    Reuses an existing conversion. Writes into a temporary directory first, so an
    interrupted conversion never leaves a half-written cache entry.
    """
    import gguf
    from safetensors.numpy import save_file

    out = Path(out_dir) if out_dir else converted_dir(gguf_path)
    if (out / "config.json").exists():
        return out
    log.info("converting %s -> %s (first start only)", gguf_path, out)
    reader = gguf.GGUFReader(str(gguf_path))
    fields = {}
    for k, f in reader.fields.items():
        try:
            fields[k] = f.contents()
        except Exception:  # fields of unknown layout are not needed for the config
            continue
    arch = fields["general.architecture"]
    if arch not in ARCHS:
        raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(ARCHS)}")
    names = {t.name for t in reader.tensors}
    cfg = _hf_config(fields, arch, names)
    tensors: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.size == int(np.prod(t.shape)) else w
        if t.name.startswith("blk."):
            _, layer, rest = t.name.split(".", 2)
            if rest not in LAYER_NAMES:
                raise ValueError(f"unexpected GGUF tensor {t.name}")
            if arch == "llama" and rest == "attn_q.weight":
                w = _unpermute(w, cfg["num_attention_heads"])
            elif arch == "llama" and rest == "attn_k.weight":
                w = _unpermute(w, cfg["num_key_value_heads"])
            tensors[f"model.layers.{layer}.{LAYER_NAMES[rest]}"] = np.ascontiguousarray(w)
        elif t.name in GLOBAL_NAMES:
            tensors[GLOBAL_NAMES[t.name]] = np.ascontiguousarray(w)
        elif t.name != "rope_freqs.weight":
            raise ValueError(f"unexpected GGUF tensor {t.name}")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / "model.safetensors"))
    with open(tmp / "config.json", "w") as f:
        json.dump(cfg, f, indent=2)
    gguf_tokenizer(fields).save_pretrained(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
