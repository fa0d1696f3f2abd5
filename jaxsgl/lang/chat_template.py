"""Role rendering through the model's own chat template (tokenizer.apply_chat_template).

A role block's text is whatever the template puts around one message. We find it by rendering
the conversation with and without a sentinel message and cutting at the sentinel:

    render(history)                       = "...history..."
    render(history + [{role, SENTINEL}])  = "...history..." + PREFIX + SENTINEL + SUFFIX

so `s.text()` of a chat program equals `apply_chat_template(s.messages())` exactly, and the text
before an assistant `gen` equals `apply_chat_template(history, add_generation_prompt=True)` for
templates whose generation prompt is the assistant prefix (ChatML, Llama 3, ...).
"""
from __future__ import annotations

import threading
from typing import Any, Optional

SENTINEL = "\u2063JAXSGL_ROLE_CONTENT\u2063"


class ChatTemplate:
    """Role prefix/suffix strings, computed from a tokenizer's chat template (cached)."""

    def __init__(self, tokenizer: Any):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; role blocks (sgl.user(...)) need one")
        self.tokenizer = tokenizer
        self._cache: dict[tuple, tuple[str, str]] = {}
        self._lock = threading.Lock()

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        if not messages and not add_generation_prompt:
            return ""
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        """The template's text for messages (what `s.text()` of a chat program equals)."""
        return self._render(messages, add_generation_prompt)

    def get_prefix_and_suffix(self, role: str, history: list[dict[str, str]]) -> tuple[str, str]:
        """(text before, text after) a `role` message's content, given the messages before it."""
        key = (role, tuple((m["role"], m["content"]) for m in history))
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        base = self._render(history)
        full = self._render(list(history) + [{"role": role, "content": SENTINEL}])
        if not full.startswith(base) or full.count(SENTINEL) != 1:
            raise ValueError(f"chat template does not render the {role!r} message as an append-only "
                             "continuation of the conversation; role blocks cannot be rendered incrementally")
        head, tail = full[len(base):].split(SENTINEL)
        with self._lock:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = (head, tail)
        return head, tail


def get_chat_template(tokenizer: Any) -> Optional[ChatTemplate]:
    """A ChatTemplate for tokenizer, or None if it has no chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None
    return ChatTemplate(tokenizer)
