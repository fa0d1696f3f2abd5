"""Convert a GGUF file (llama / qwen2 / qwen3) into a cached HF checkpoint directory.

The `gguf` package reads and dequantises the tensors (fp32 out, exact for every
quantisation type); the tokenizer and chat template are converted by
`transformers.AutoTokenizer(..., gguf_file=...)`. The result lands in
`$JAXSGL_CACHE` (default ~/.cache/jaxsgl) keyed by the file's name, size and mtime,
so the second start skips the conversion and loads safetensors directly.

Concurrency: processes converting the same file into the same cache take an exclusive
`fcntl.flock` on `<entry>.lock`; the one that gets it first writes into a private temporary
directory and renames it into place (atomic), the others wait and then reuse its result.
A reader never sees a half-written entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxsgl.progress import progress

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


KEY_SAMPLE_BYTES = 1 << 20


def converted_dir(gguf_path: str | Path) -> Path:
    """Where the HF conversion of gguf_path lives (it may not exist yet). Keyed by the file's name, size
    and first and last MiB (its metadata and its last tensors), not by its path or mtime: the same
    GGUF installed in several virtual environments (each fresh clone's pip install) is converted once."""
    p = Path(gguf_path).resolve()
    size = p.stat().st_size
    h = hashlib.sha1(f"{p.name}:{size}:".encode())
    with open(p, "rb") as f:
        h.update(f.read(KEY_SAMPLE_BYTES))
        f.seek(max(size - KEY_SAMPLE_BYTES, 0))
        h.update(f.read(KEY_SAMPLE_BYTES))
    return cache_root() / f"{p.stem}-{h.hexdigest()[:12]}"


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


def _is_complete(out: Path) -> bool:
    """An entry is complete once it exists at all: it only ever appears by an atomic rename."""
    return (out / "config.json").exists() and (out / "model.safetensors").exists()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive flock on lock_path (created if missing, never deleted) for the block."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (the rename still keeps entries whole)
        yield
        return
    with open(lock_path, "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process converting into %s", lock_path.with_suffix(""))
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def convert_gguf(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write config.json, model.safetensors (fp32) and the tokenizer files; return the directory.

    Reuses an existing conversion. Safe to run from several processes at once (see the module
    docstring): creates `out` (by renaming a finished temporary directory) and `<out>.lock`.
    """
    out = Path(out_dir) if out_dir else converted_dir(gguf_path)
    if _is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(out.with_name(out.name + ".lock")):
        if _is_complete(out):  # another process finished it while we waited
            return out
        log.info("converting %s -> %s (first start only)", gguf_path, out)
        tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the entry should not be
        try:
            _write_conversion(gguf_path, tmp)
            if out.exists():  # a stale, incomplete entry (e.g. from an older version)
                shutil.rmtree(out)
            os.rename(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def open_gguf(path: str | Path) -> Any:
    """gguf.GGUFReader over `path`, reading its metadata ~3x faster (~2 s instead of ~6 s for the
    default model's 98k tokenizer strings on the 2-core machine).

    The reader slices its np.memmap once per value, twice per string, and a memmap slice costs
    ~10 us in `memmap.__array_finalize__`; `_get` here slices a plain ndarray view of the same
    mapping instead. Same values, same dtypes (tests/model/test_gguf_reader.py checks every field
    and tensor against the stock reader)."""
    import gguf

    class Reader(gguf.GGUFReader):
        def _get(self, offset: int, dtype: Any, count: int = 1, override_order: Any = None) -> np.ndarray:
            plain = self.__dict__.get("_plain")
            if plain is None:
                plain = self.__dict__["_plain"] = self.data.view(np.ndarray)
            count = int(count)
            arr = plain[offset:offset + np.dtype(dtype).itemsize * count].view(dtype=dtype)[:count]
            return arr.view(arr.dtype.newbyteorder(self.byte_order if override_order is None else override_order))

    return Reader(str(path))


def _write_conversion(gguf_path: str | Path, tmp: Path) -> None:
    """Dequantise gguf_path into tmp (config.json, model.safetensors, tokenizer files)."""
    import gguf
    from safetensors.numpy import save_file

    with progress(desc="converting GGUF (first start only)", unit="tensor") as bar:
        bar.set_postfix_str("reading metadata")
        reader = open_gguf(gguf_path)
        bar.total = len(reader.tensors)
        bar.set_postfix_str("dequantising")
        fields = {}
        for k, f in reader.fields.items():
            try:
                fields[k] = f.contents()
            except Exception:  # fields of unknown layout are not needed for the config
                continue
        arch = fields["general.architecture"]
        if arch not in ARCHS:
            raise ValueError(f"GGUF architecture {arch!r} is not supported; supported: {sorted(ARCHS)}")
        cfg = _hf_config(fields, arch, {t.name for t in reader.tensors})
        tensors = {}
        for t in reader.tensors:
            name, w = _convert_tensor(gguf, t, arch, cfg)
            if name is not None:
                tensors[name] = w
            bar.update()
        bar.set_postfix_str("writing safetensors")
        save_file(tensors, str(tmp / "model.safetensors"))
        with open(tmp / "config.json", "w") as f:
            json.dump(cfg, f, indent=2)
        bar.set_postfix_str("converting the tokenizer")
        gguf_tokenizer(fields).save_pretrained(str(tmp))


def _convert_tensor(gguf: Any, t: Any, arch: str, cfg: dict) -> tuple[str | None, np.ndarray]:
    """(HF name, fp32 array) of one GGUF tensor; name None for tensors HF does not keep (rope_freqs)."""
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
        return f"model.layers.{layer}.{LAYER_NAMES[rest]}", np.ascontiguousarray(w)
    if t.name in GLOBAL_NAMES:
        return GLOBAL_NAMES[t.name], np.ascontiguousarray(w)
    if t.name != "rope_freqs.weight":
        raise ValueError(f"unexpected GGUF tensor {t.name}")
    return None, w
