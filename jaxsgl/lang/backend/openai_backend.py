"""`sgl.OpenAI(model_name, base_url=None, api_key=None, is_chat_model=None, chat_template=None)`.

Programs against any OpenAI-compatible API through the `openai` client library: jaxsgl's own
server (`/v1/completions`, `/v1/chat/completions`), SGLang's, vLLM's or OpenAI's.

- Completion models get the program's text as the prompt; chat models get its messages, so a
  `gen` must open an assistant turn (a chat API cannot continue a partial one) unless the program
  uses API speculative execution (`@sgl.function(num_api_spec_tokens=N)`, api_spec.py).
- `select` (completion models) is one batched call that echoes `prompt + choice` for every choice
  with the prompt's token logprobs (`echo=True, logprobs=0, max_tokens=0`), scored where each choice's
  tokens start to differ from the prompt's, as the in-process backend does; chat APIs return no
  prompt logprobs, so chat models cannot select.
- `token_usage` counts the API calls and the prompt / completion tokens of every call.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, Optional

from jaxsgl.lang.backend.base import BackendError, BaseBackend, PromptContext
from jaxsgl.lang.backend.runtime import common_prefix_len
from jaxsgl.lang.chat_template import NAMED_TEMPLATES, resolve_chat_template
from jaxsgl.lang.choices import ChoicesDecision, ChoicesSamplingMethod, mean_logprob
from jaxsgl.lang.ir import SamplingParams

INSTRUCT_MODEL_NAMES = ("gpt-3.5-turbo-instruct",)  # SGLang's list of completion models


def _finish(choice: Any) -> dict[str, Any]:
    reason = getattr(choice, "finish_reason", None)
    return {"type": reason or "stop", "matched": getattr(choice, "matched_stop", None)}


class OpenAI(BaseBackend):
    """A model behind an OpenAI-compatible API; `client=` takes a ready `openai.OpenAI` (or a stand-in)."""

    api_spec_mode: Optional[str] = None

    def __init__(self, model_name: str, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 is_chat_model: Optional[bool] = None, chat_template: Any = None, timeout: float = 600.0,
                 max_retries: int = 0, client: Any = None, supports_vision: Optional[bool] = None,
                 **client_kwargs: Any):
        if client is None:
            import openai

            client = openai.OpenAI(base_url=base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                   timeout=timeout, max_retries=max_retries, **client_kwargs)
        self.client = client
        self.model_name = model_name
        self.base_url = str(getattr(client, "base_url", base_url or ""))
        self.is_chat_model = model_name not in INSTRUCT_MODEL_NAMES if is_chat_model is None else bool(is_chat_model)
        self.api_spec_mode = "chat" if self.is_chat_model else "completion"
        self.supports_vision = self.is_chat_model if supports_vision is None else bool(supports_vision)
        self.chat_template = resolve_chat_template(chat_template) or NAMED_TEMPLATES["default"]

    def get_model_name(self) -> str:
        return self.model_name

    def describe(self) -> str:
        return f"OpenAI({self.model_name!r} at {self.base_url})"

    def get_chat_template(self) -> Any:
        return self.chat_template

    # ---- one API call ----
    def _kwargs(self, sp: SamplingParams, max_tokens: Optional[int] = None, stop: bool = True) -> dict[str, Any]:
        """OpenAI's request fields for sp; SGLang's extras (top_k, min_p, regex, ...) go in extra_body."""
        kw: dict[str, Any] = {"max_tokens": sp.max_new_tokens if max_tokens is None else max_tokens}
        for key in ("temperature", "top_p", "frequency_penalty", "presence_penalty"):
            if getattr(sp, key) is not None:
                kw[key] = getattr(sp, key)
        if sp.n not in (None, 1):
            kw["n"] = sp.n
        stops = ([sp.stop] if isinstance(sp.stop, str) else list(sp.stop or [])) if stop else []
        if stops:
            kw["stop"] = stops
        extra: dict[str, Any] = {}
        if sp.top_k not in (None, -1, 0):
            extra["top_k"] = sp.top_k
        if sp.min_p:
            extra["min_p"] = sp.min_p
        if sp.ignore_eos:
            extra["ignore_eos"] = True
        if sp.min_new_tokens:
            extra["min_tokens"] = sp.min_new_tokens
        if sp.stop_token_ids:
            extra["stop_token_ids"] = list(sp.stop_token_ids)
        constraint = sp.constraint_dict()
        if "json_schema" in constraint:
            import json

            schema = json.loads(constraint["json_schema"])
            fmt = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
            if self.is_chat_model:
                kw["response_format"] = fmt
            else:  # not a field of OpenAI's completions API; SGLang's and jaxsgl's servers take it there too
                extra["response_format"] = fmt
        if "regex" in constraint:
            extra["regex"] = constraint["regex"]
        if constraint.get("stop_regex"):
            extra["stop_regex"] = constraint["stop_regex"]
        if extra:
            kw["extra_body"] = extra
        return kw

    def _create(self, what: str, **kwargs: Any) -> Any:
        """client.<what>.create(...) with the usage counted; raises BackendError naming this backend."""
        api = self.client.chat.completions if what == "chat" else self.client.completions
        try:
            out = api.create(model=self.model_name, **kwargs)
        except Exception as e:  # noqa: BLE001 - openai.APIError & co.: re-raised naming backend and request
            raise BackendError(f"{self.describe()}: {what} call failed: {type(e).__name__}: {e} "
                               f"[request: {_describe(kwargs)}]", getattr(e, "status_code", None)) from e
        if not kwargs.get("stream"):
            usage = getattr(out, "usage", None)
            self.token_usage.add(getattr(usage, "prompt_tokens", 0), getattr(usage, "completion_tokens", 0))
        return out

    def _chat_messages(self, context: Optional[PromptContext], what: str) -> list[dict[str, Any]]:
        if context is None or context.role != "assistant" or not context.at_role_start:
            raise ValueError(f"{self.describe()} is a chat model: sgl.{what} must come right after sgl.assistant(...) "
                             "(a chat API cannot continue a partial assistant turn); for several gens in one turn "
                             "use @sgl.function(num_api_spec_tokens=N)")
        return context.messages

    # ---- the backend interface ----
    def generate(self, prompt: str, sampling_params: SamplingParams,
                 context: Optional[PromptContext] = None) -> tuple[Any, dict[str, Any]]:
        kw = self._kwargs(sampling_params)
        if self.is_chat_model:
            out = self._create("chat", messages=self._chat_messages(context, "gen"), **kw)
            texts = [c.message.content or "" for c in out.choices]
        else:
            out = self._create("completions", prompt=prompt, **kw)
            texts = [c.text for c in out.choices]
        usage = getattr(out, "usage", None)
        meta = {"finish_reason": _finish(out.choices[0]), "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None)}
        return (texts if len(texts) > 1 else texts[0]), meta

    def generate_stream(self, prompt: str, sampling_params: SamplingParams,
                        context: Optional[PromptContext] = None) -> Iterator[tuple[str, dict]]:
        kw = self._kwargs(sampling_params)
        kw.update(stream=True, stream_options={"include_usage": True})
        if self.is_chat_model:
            stream = self._create("chat", messages=self._chat_messages(context, "gen"), **kw)
        else:
            stream = self._create("completions", prompt=prompt, **kw)
        meta: dict[str, Any] = {"finish_reason": None}
        try:
            for chunk in stream:
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    self.token_usage.add(usage.prompt_tokens, usage.completion_tokens)
                    meta = {**meta, "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text = (choice.delta.content or "") if self.is_chat_model else (choice.text or "")
                if choice.finish_reason is not None:
                    meta = {**meta, "finish_reason": _finish(choice)}
                if text or choice.finish_reason is not None:
                    yield text, meta
        except BackendError:
            raise
        except Exception as e:  # noqa: BLE001 - a broken stream
            raise BackendError(f"{self.describe()}: the stream failed: {type(e).__name__}: {e}") from e

    def generate_speculative(self, prompt: str, sampling_params: SamplingParams, max_tokens: int,
                             context: Optional[PromptContext] = None) -> dict[str, Any]:
        """max_tokens tokens with no stop strings, with the token texts (logprobs) to count tokens by."""
        kw = self._kwargs(sampling_params, max_tokens=max_tokens, stop=False)
        if self.is_chat_model:
            out = self._create("chat", messages=self._chat_messages(context, "gen"), logprobs=True, **kw)
            choice = out.choices[0]
            text = choice.message.content or ""
            content = getattr(getattr(choice, "logprobs", None), "content", None)
            pieces = [c.token for c in content] if content else None
        else:
            out = self._create("completions", prompt=prompt, logprobs=0, **kw)
            choice = out.choices[0]
            text = choice.text
            pieces = getattr(getattr(choice, "logprobs", None), "tokens", None)
        return {"text": text, "pieces": token_pieces(text, pieces), "finished": choice.finish_reason == "stop"}

    def select(self, prompt: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod) -> ChoicesDecision:
        if self.is_chat_model:
            raise ValueError(f"{self.describe()} is a chat model: select needs the token logprobs of the prompt, "
                             "which a chat API does not return; use a completion model (is_chat_model=False)")
        outs = self._echo([prompt] + [prompt + c for c in choices])
        prompt_tokens = outs[0][1]
        inputs = []
        for lps, toks in outs[1:]:
            start = max(min(common_prefix_len(prompt_tokens, toks), len(toks) - 1), 0)
            entries = [(lp, None, t) for lp, t in zip(lps[start:], toks[start:])]
            inputs.append([e for e in entries if e[0] is not None] or entries)
        normalized = [mean_logprob(x) for x in inputs]
        uncond = None
        if choices_method.requires_unconditional_logprobs:
            uncond = []
            for own, (lps, toks) in zip(inputs, self._echo(["".join(e[2] for e in x) for x in inputs])):
                got = [(lp, None, t) for lp, t in zip(lps, toks)][-len(own):]
                uncond.append([(None, None, "")] * (len(own) - len(got)) + got)
        return choices_method(choices=choices, normalized_prompt_logprobs=normalized, input_token_logprobs=inputs,
                              output_token_logprobs=[[] for _ in choices], unconditional_token_logprobs=uncond)

    def _echo(self, prompts: list[str]) -> list[tuple[list[Optional[float]], list[str]]]:
        """(token logprobs, token texts) of each prompt, from one batched echo call."""
        out = self._create("completions", prompt=prompts, echo=True, logprobs=0, max_tokens=0, temperature=0.0)
        res: list[Any] = [None] * len(prompts)
        for i, choice in enumerate(out.choices):
            lp = getattr(choice, "logprobs", None)
            if lp is None or getattr(lp, "tokens", None) is None:
                raise BackendError(f"{self.describe()}: the API did not return prompt logprobs for echo=True "
                                   "(select needs them)")
            res[getattr(choice, "index", i)] = (list(lp.token_logprobs), list(lp.tokens))
        return res


def token_pieces(text: str, tokens: Optional[list[str]]) -> Optional[list[str]]:
    """The token texts that make up text (a trailing EOS token's text dropped), or None if they do not
    join to it (a multi-byte character split across tokens decodes to replacement characters)."""
    if tokens is None:
        return None
    out, n = [], 0
    for tok in tokens:
        if n == len(text):
            break
        out.append(tok)
        n += len(tok)
    return out if "".join(out) == text else None


def _describe(kwargs: dict[str, Any]) -> str:
    prompt = kwargs.get("prompt", kwargs.get("messages"))
    shown = repr(prompt)[:80] + ("..." if len(repr(prompt)) > 80 else "")
    rest = {k: v for k, v in kwargs.items() if k not in ("prompt", "messages")}
    return f"{'messages' if 'messages' in kwargs else 'prompt'}={shown}, {rest}"
