"""RequestState: what the engine tracks per request beyond the scheduler's Req, and its result dict."""
from __future__ import annotations

import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from concurrent.futures import Future

from jaxsgl.constrained import ConstraintSpec, EbnfMatcher, TokenAutomaton
from jaxsgl.engine.detokenize import OutputText
from jaxsgl.engine.sampling_params import SamplingParams
from jaxsgl.scheduler import Req

_DONE = object()  # end-of-stream marker in RequestState.events


@dataclass(eq=False)
class GrammarState:
    """One request's position in its constraint (host copy; the device chains it under overlap)."""

    spec: ConstraintSpec
    fsm: TokenAutomaton | None = None      # device-side constraint
    base: int = 0                          # its first global state id in the tables
    matcher: EbnfMatcher | None = None     # host-side (EBNF) constraint
    state: int = 0                         # local state after every known output token
    prev_state: int = 0                    # ... before the last one (for a jump-forward rollback)
    finished: bool = False                 # the match is complete: only EOS may follow
    jump_forward_tokens: int = 0           # tokens appended without decoding
    error: BaseException | None = None     # the host matcher failed mid-decode: fails at the next token
    future: Future | None = field(default=None, repr=False)


@dataclass(eq=False)
class RequestState:
    """One request as the engine sees it; the loop thread mutates it, the caller reads events."""

    req: Req
    params: SamplingParams
    text: OutputText
    return_logprob: bool = False
    logprob_start_len: int = -1  # user's: input logprobs from this prompt position (-1: none)
    top_logprobs_num: int = 0
    stream: bool = False
    created: float = field(default_factory=time.perf_counter)
    output_logprobs: list[tuple[float, int, None]] = field(default_factory=list)
    output_top: list[list[tuple[float, int, None]]] = field(default_factory=list)
    input_logprobs: dict[int, float] = field(default_factory=dict)  # prompt position -> logprob
    input_top: dict[int, list[tuple[float, int, None]]] = field(default_factory=dict)
    finish_reason: dict[str, Any] | None = None
    error: BaseException | None = None
    sent_text_len: int = 0
    events: "queue.Queue[Any]" = field(default_factory=queue.Queue)
    sink: Callable[[Any], None] | None = None  # set by LoopBridge.attach (engine/async_stream.py): events go to the event loop
    first_token_time: float | None = None  # perf_counter when the first output token was delivered
    grammar: GrammarState | None = None  # its constraint's state (engine/grammar.py), if constrained

    @property
    def rid(self) -> str:
        return self.req.rid

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.error is not None

    def result(self, text: str | None = None) -> dict[str, Any]:
        """The SGLang-shaped output dict (text defaults to the whole visible text)."""
        req = self.req
        meta: dict[str, Any] = {
            "id": req.rid,
            "prompt_tokens": len(req.prompt_ids),
            "completion_tokens": req.num_generated,
            "cached_tokens": req.cached_len,
            "finish_reason": self.finish_reason,
            "e2e_latency": time.perf_counter() - self.created,
        }
        if self.grammar is not None:
            meta["jump_forward_tokens"] = self.grammar.jump_forward_tokens
        if self.return_logprob:
            start = max(self.logprob_start_len, 0)
            meta["input_token_logprobs"] = [
                (self.input_logprobs.get(p), req.prompt_ids[p], None)
                for p in range(start, len(req.prompt_ids))] if self.logprob_start_len >= 0 else []
            meta["output_token_logprobs"] = list(self.output_logprobs)
            if self.top_logprobs_num:
                meta["input_top_logprobs"] = [self.input_top.get(p) for p in range(start, len(req.prompt_ids))] \
                    if self.logprob_start_len >= 0 else []
                meta["output_top_logprobs"] = list(self.output_top)
        return {"text": self.text.visible() if text is None else text, "output_ids": req.generated_ids(),
                "meta_info": meta}

    def push_increment(self) -> None:
        """Stream the newly visible text (never a partial stop string)."""
        visible = self.text.visible()
        if len(visible) > self.sent_text_len or self.done:
            self._emit(self.result(visible[self.sent_text_len:]))
            self.sent_text_len = len(visible)

    def close(self) -> None:
        """Wake the waiting caller: final increment when streaming, then the end marker."""
        if self.stream and self.error is None:
            self.push_increment()
        self._emit(_DONE)

    def _emit(self, ev: Any) -> None:
        (self.sink or self.events.put)(ev)

    async def async_wait(self) -> dict[str, Any]:
        """asyncio twin of wait() (after LoopBridge.attach)."""
        while await self.events.get() is not _DONE:  # type: ignore[misc]
            pass
        self.raise_error()
        return self.result()

    def wait(self) -> dict[str, Any]:
        """Block until done; raise the request's error if it failed."""
        while self.events.get() is not _DONE:
            pass
        self.raise_error()
        return self.result()

    def raise_error(self) -> None:
        """Bad input found after queueing (e.g. a constraint that does not compile) raises as the
        ValueError it is; anything else as a RuntimeError naming the request."""
        if self.error is None:
            return
        if isinstance(self.error, ValueError):
            raise ValueError(f"request {self.req.rid}: {self.error}") from self.error
        raise RuntimeError(f"request {self.req.rid} failed: {self.error}") from self.error

    def iter_events(self):
        """Yield streamed increments until done."""
        while True:
            ev = self.events.get()
            if ev is _DONE:
                self.raise_error()
                return
            yield ev
