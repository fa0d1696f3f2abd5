"""Tokenizer and chat template, through transformers.AutoTokenizer (no hand-written BPE)."""
from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(model_dir: str | Path) -> Any:
    """The HF tokenizer saved in model_dir (GGUF conversions save theirs there too)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


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
