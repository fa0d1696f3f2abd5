"""A stand-in for `openai.OpenAI` over a scripted char-level model (one token per character).

The model continues a prompt along `script` while the prompt is a prefix of it (then ends: EOS),
and otherwise with FakeEngine's hash model (never ends by itself). Every call is recorded, usage is
counted, and echo=True with logprobs scores prompts with FakeEngine's logprobs, so the OpenAI
backend's speculation and select can be checked in milliseconds.
"""
from __future__ import annotations

import threading
from types import SimpleNamespace as NS
from typing import Any, Optional

from fake_engine import CharTokenizer, greedy_continuation, token_logprob

from jaxsgl.lang.api_spec import first_stop


class ScriptedModel:
    def __init__(self, script: str = ""):
        self.script = script

    def complete(self, prompt: str, max_tokens: int, stop: Optional[list[str]]) -> tuple[str, str]:
        """(text, finish_reason) of a greedy continuation."""
        if self.script.startswith(prompt) and len(self.script) > len(prompt):
            cont, ends = self.script[len(prompt):], True
        else:
            cont, ends = greedy_continuation(prompt, max_tokens), False
        text = cont[:max_tokens]
        finish = "stop" if ends and len(cont) <= max_tokens else "length"
        hit = first_stop(text, list(stop or []))
        if hit is not None:
            text, finish = text[:hit[0]], "stop"
        return text, finish


class FakeOpenAIClient:
    """client.completions.create / client.chat.completions.create with OpenAI's response shapes."""

    base_url = "fake://v1"

    def __init__(self, model: ScriptedModel, fail: Optional[str] = None):
        self.model = model
        self.fail = fail
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.completions = NS(create=lambda **kw: self._create(False, **kw))
        self.chat = NS(completions=NS(create=lambda **kw: self._create(True, **kw)))

    def _create(self, chat: bool, model: str, max_tokens: int = 16, stop: Any = None, echo: bool = False,
                logprobs: Any = None, stream: bool = False, n: int = 1, prompt: Any = None,
                messages: Any = None, stream_options: Any = None, **kw: Any) -> Any:
        with self.lock:
            self.calls.append({"chat": chat, "prompt": prompt, "messages": messages, "max_tokens": max_tokens,
                               "stop": stop, "echo": echo, "logprobs": logprobs, "stream": stream, **kw})
        if self.fail:
            raise RuntimeError(self.fail)
        stops = [stop] if isinstance(stop, str) else stop
        if chat:
            texts = [CharTokenizer().apply_chat_template(messages, add_generation_prompt=True)]
        else:
            texts = prompt if isinstance(prompt, list) else [prompt]
        choices, usage = [], NS(prompt_tokens=0, completion_tokens=0)
        for i, p in enumerate(texts):
            out, finish = self.model.complete(p, max_tokens, stops) if max_tokens else ("", "length")
            usage.prompt_tokens += len(p)
            usage.completion_tokens += len(out)
            lp = None
            if chat and logprobs:
                lp = NS(content=[NS(token=c) for c in out])
            elif not chat and logprobs is not None:
                full = p + out if echo else out
                ids = [ord(c) for c in p + out]
                start = 0 if echo else len(p)
                lp = NS(tokens=list(full), token_logprobs=[token_logprob(ids, k) for k in range(start, len(ids))])
            text = (p + out) if echo else out
            choices.append(NS(index=i, text=text, message=NS(role="assistant", content=text), logprobs=lp,
                              finish_reason=finish, matched_stop=None))
        if not stream:
            return NS(choices=choices, usage=usage)
        return self._stream(chat, choices[0], usage)

    @staticmethod
    def _stream(chat: bool, choice: Any, usage: Any) -> Any:
        text = choice.text
        for k in range(0, len(text), 3):
            piece = text[k:k + 3]
            delta = NS(content=piece, role="assistant")
            yield NS(choices=[NS(index=0, text=piece, delta=delta, finish_reason=None)], usage=None)
        yield NS(choices=[NS(index=0, text="", delta=NS(content=None), finish_reason=choice.finish_reason)], usage=None)
        yield NS(choices=[], usage=usage)
