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


class RoleTemplate:
    """Fixed role prefix/suffix strings (SGLang's named templates), for backends without a tokenizer."""

    def __init__(self, name: str, roles: dict[str, tuple[str, str]], default_system_prompt: Optional[str] = None,
                 image_token: str = "<image>"):
        self.name = name
        self.roles = roles
        self.default_system_prompt = default_system_prompt
        self.image_token = image_token

    def get_prefix_and_suffix(self, role: str, history: list[dict[str, str]]) -> tuple[str, str]:
        if role not in self.roles:
            raise ValueError(f"chat template {self.name!r} has no role {role!r}")
        prefix, suffix = self.roles[role]
        if not history and role != "system" and self.default_system_prompt:
            sp, ss = self.roles["system"]
            prefix = sp + self.default_system_prompt + ss + prefix
        return prefix, suffix

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        out, history = "", []
        for m in messages:
            head, tail = self.get_prefix_and_suffix(m["role"], history)
            out += head + m["content"] + tail
            history.append(m)
        return out + (self.get_prefix_and_suffix("assistant", history)[0] if add_generation_prompt else "")


NAMED_TEMPLATES: dict[str, RoleTemplate] = {
    "default": RoleTemplate("default", {"system": ("SYSTEM:", "\n"), "user": ("USER:", "\n"),
                                        "assistant": ("ASSISTANT:", "\n")}),
    "chatml": RoleTemplate("chatml", {r: (f"<|im_start|>{r}\n", "<|im_end|>\n")
                                      for r in ("system", "user", "assistant")}),
    "llama-3-instruct": RoleTemplate("llama-3-instruct", {
        r: (f"<|start_header_id|>{r}<|end_header_id|>\n\n", "<|eot_id|>") for r in ("system", "user", "assistant")}),
}


def resolve_chat_template(spec: Any) -> Any:
    """A role renderer from a ChatTemplate/RoleTemplate, a tokenizer, a template name or a tokenizer directory."""
    if spec is None or isinstance(spec, (ChatTemplate, RoleTemplate)):
        return spec
    if isinstance(spec, str):
        if spec in NAMED_TEMPLATES:
            return NAMED_TEMPLATES[spec]
        import os

        if not os.path.isdir(spec):
            raise ValueError(f"chat template {spec!r} is neither a known name {sorted(NAMED_TEMPLATES)} nor a "
                             "tokenizer directory")
        from jaxsgl.tokenizer import load_tokenizer

        return get_chat_template(load_tokenizer(spec))
    if hasattr(spec, "apply_chat_template"):
        return get_chat_template(spec)
    if hasattr(spec, "get_prefix_and_suffix"):
        return spec
    raise TypeError(f"chat_template must be a template name {sorted(NAMED_TEMPLATES)}, a tokenizer (or its "
                    f"directory) or a ChatTemplate, got {type(spec).__name__}")
