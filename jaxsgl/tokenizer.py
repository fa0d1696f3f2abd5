"""Tokenizer and chat template, through transformers.AutoTokenizer (no hand-written BPE).

AutoTokenizer picks the tokenizer class from config.json through AutoConfig, which imports the
model's configuration module, and with it torch where torch is installed: seconds of a start, and
more seconds of interpreter teardown at exit. So the class AutoTokenizer picked for a directory is
recorded under `$JAXSGL_CACHE/tokenizers`, keyed by the directory, the size and mtime of its files
(weights aside) and the transformers version; a later load of the same directory calls that
class's own `from_pretrained`, the call AutoTokenizer ends in, without AutoConfig.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_RECORD_VERSION = 1
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".msgpack", ".h5")


def _record_path(model_dir: Path) -> Path | None:
    """Where the class AutoTokenizer picks for model_dir is recorded; None if model_dir is unreadable."""
    import transformers

    from jaxsgl.model.gguf_convert import cache_root

    try:
        files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in model_dir.iterdir()
                       if p.is_file() and not p.name.endswith(_WEIGHT_SUFFIXES))
    except OSError:
        return None
    key = json.dumps([_RECORD_VERSION, str(model_dir.resolve()), transformers.__version__, files])
    return cache_root() / "tokenizers" / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".json")


def _recorded_class(record: Path) -> Any:
    """The tokenizer class recorded at `record`, or None (no record, or it no longer imports)."""
    try:
        with open(record) as f:
            module, name = json.load(f)["class"]
        if not module.startswith("transformers."):
            return None
        return getattr(importlib.import_module(module), name)
    except (OSError, ValueError, KeyError, TypeError, ImportError, AttributeError):
        return None


def _record_class(record: Path, cls: type) -> None:
    if not cls.__module__.startswith("transformers."):  # e.g. remote code: always through AutoTokenizer
        return
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=record.parent, prefix=".tmp-")
        with os.fdopen(fd, "w") as f:
            json.dump({"class": [cls.__module__, cls.__qualname__]}, f)
        os.replace(tmp, record)  # atomic: a concurrent reader sees the whole record or none
    except OSError as e:  # a read-only cache: every load goes through AutoTokenizer
        log.debug("could not record the tokenizer class in %s: %s", record, e)


def load_tokenizer(model_dir: str | Path) -> Any:
    """The HF tokenizer saved in model_dir (GGUF conversions save theirs there too): the object
    AutoTokenizer.from_pretrained(model_dir) returns (see the module docstring for the shortcut)."""
    path = Path(model_dir)
    record = _record_path(path) if path.is_dir() else None
    cls = _recorded_class(record) if record is not None else None
    if cls is not None:
        return cls.from_pretrained(str(model_dir))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    if record is not None:
        _record_class(record, type(tok))
    return tok


def load_tokenizer_in_background(model_dir: str | Path) -> concurrent.futures.Future:
    """load_tokenizer(model_dir) on a daemon thread; the future's result() waits (and re-raises). It is
    seconds of mostly Python for a large vocabulary: overlap it with waiting (EngineProcess waits for its
    child), not with other Python work, which it slows down by holding the GIL."""
    future: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        t0 = time.perf_counter()
        try:
            future.set_result(load_tokenizer(model_dir))
        except BaseException as e:  # noqa: BLE001 - re-raised by future.result() on the caller's thread
            future.set_exception(e)
        else:
            log.info("tokenizer in %.1fs (on a thread)", time.perf_counter() - t0)
    threading.Thread(target=run, name="jaxsgl-tokenizer", daemon=True).start()
    return future


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of messages rendered by the model's chat template, ready for the assistant turn."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("this model's tokenizer has no chat template; run without --chat")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.encode(text, add_special_tokens=False)


def eos_token_ids(tokenizer: Any, config_eos: tuple[int, ...]) -> set[int]:
    """Stop tokens: the config's eos ids plus the tokenizer's eos token."""
    ids = set(config_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids
