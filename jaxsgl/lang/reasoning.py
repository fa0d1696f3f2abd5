"""`sgl.separate_reasoning(gen, model_type)`: split a reasoning model's think block from its answer.

The think tags per model type follow SGLang's reasoning parsers (srt/parser/reasoning_parser.py):
"forced" types (DeepSeek-R1, Qwen3-thinking, ...) reason from the first token, their template having
opened the block already, so text with only an end tag is all reasoning before it.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

# model_type -> (start tag, end tag, reasoning is forced: the output starts inside the block)
THINK_TAGS: dict[str, tuple[str, str, bool]] = {
    "deepseek-r1": ("<think>", "</think>", True),
    "deepseek-v3": ("<think>", "</think>", False),
    "qwen3": ("<think>", "</think>", False),
    "qwen3-thinking": ("<think>", "</think>", True),
    "glm45": ("<think>", "</think>", False),
    "kimi": ("\u25c1think\u25b7", "\u25c1/think\u25b7", False),
    "kimi_k2": ("<think>", "</think>", False),
    "minimax": ("<think>", "</think>", True),
    "step3": ("<think>", "</think>", True),
    "mimo": ("<think>", "</think>", False),
    "nanbeige": ("<think>", "</think>", False),
    "interns1": ("<think>", "</think>", False),
    "think": ("<think>", "</think>", False),  # generic think tags (no model-specific rule)
}
# substrings of a model name -> its model_type, for separate_reasoning(model_type=None)
_NAME_HINTS = (("deepseek-r1", "deepseek-r1"), ("qwq", "deepseek-r1"), ("qwen3", "qwen3"), ("glm-4.5", "glm45"),
               ("kimi", "kimi_k2"), ("minimax", "minimax"), ("step3", "step3"), ("mimo", "mimo"))


class ReasoningSplit(NamedTuple):
    reasoning: str
    text: str


def model_type_for(model_name: Optional[str]) -> str:
    """The reasoning-parser type a model name suggests; "think" (plain <think> tags) if none."""
    name = (model_name or "").lower()
    for hint, model_type in _NAME_HINTS:
        if hint in name:
            return model_type
    return "think"


def split_reasoning(text: str, model_type: str) -> ReasoningSplit:
    """(reasoning, answer) of text under model_type's tags; raises ValueError for an unknown type.

    No start tag (and not forced): no reasoning. A block without its end tag (truncated output) is
    all reasoning, as SGLang's parser decides. The answer loses the whitespace after the end tag."""
    tags = THINK_TAGS.get(model_type.lower())
    if tags is None:
        raise ValueError(f"unknown reasoning model_type {model_type!r}; known: {sorted(THINK_TAGS)}")
    start, end, forced = tags
    if not forced and start not in text:
        return ReasoningSplit("", text)
    body = text.lstrip()
    while body.startswith(start):
        body = body[len(start):]
    if end not in body:
        return ReasoningSplit(body.strip(), "")
    reasoning, answer = body.split(end, 1)
    return ReasoningSplit(reasoning.strip(), answer.lstrip())


def reasoning_name(name: Optional[str]) -> str:
    """The variable the reasoning part goes to (SGLang's `<name>_reasoning_content`)."""
    if not name:
        raise ValueError("separate_reasoning needs a named gen/select (sgl.gen('answer', ...))")
    return f"{name}_reasoning_content"
