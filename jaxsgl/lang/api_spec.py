"""API speculative execution (`@sgl.function(num_api_spec_tokens=N)`; SGLang paper, section 4).

Against an API endpoint every `gen` is a paid call that resends the whole prompt. With speculation
the first `gen` asks for N tokens ignoring its stop strings; what comes back past the gen's own
stop is kept (`Speculation`) and the program's next pieces are matched against it:

    program:  "Name:" gen(stop="\\n")  "\\nAge:" gen(stop="\\n")  "\\nJob:" gen(stop="\\n")
    call 1:   " Ada\\nAge: 36\\nJob: mathematician\\n..."      (N tokens, no stop)
               |gen 1| fill | gen 2 | fill | gen 3      -> one call instead of three

A gen's answer is the kept text's first max_tokens tokens (counted with the token texts the API
returns as logprobs) cut at its first stop string: what the API returns for it without speculation.
A fill that does not match the kept text, or ends inside a kept token (a label's trailing space that
the model wrote as part of the next word: the API would tokenize that prompt differently), drops the
kept text, and the next gen makes a new call from the program's real text, so a completion model's
outputs equal those without speculation (up to a prompt that retokenizes differently).

Chat models cannot continue a partial assistant turn, so an assistant turn holding several gens is
deferred (`ChatTurn`) and answered by one call at the turn's end, matched term by term; a reply that
does not follow the program's text is retried (with more tokens if it ran out) and otherwise fails
with an error naming the term: a chat API has nothing exact to fall back to.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from jaxsgl.lang.ir import SamplingParams

MAX_CHAT_TRIES = 3  # SGLang's spec_max_num_tries


def stop_list(sp: SamplingParams) -> list[str]:
    stop = sp.stop
    if not stop:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


def spec_key(sp: SamplingParams) -> tuple:
    """The settings a speculated continuation was sampled under (all but the length and stop strings)."""
    return (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.frequency_penalty, sp.presence_penalty,
            bool(sp.ignore_eos), sp.min_new_tokens)


def eligible(sp: SamplingParams) -> bool:
    """Whether a gen can be answered from speculated text (plain text generation, one sample)."""
    return (sp.n in (None, 1) and not sp.return_logprob and sp.regex is None and sp.json_schema is None
            and sp.dtype is None and not sp.stop_regex and not sp.stop_token_ids and not sp.min_new_tokens)


def first_stop(text: str, stops: list[str]) -> Optional[tuple[int, str]]:
    """(position, stop) of the stop string that completes first in text (the earliest start on a tie)."""
    best: Optional[tuple[int, int, str]] = None
    for stop in stops:
        i = text.find(stop)
        if i >= 0 and (best is None or (i + len(stop), i) < best[:2]):
            best = (i + len(stop), i, stop)
    return None if best is None else (best[1], best[2])


@dataclass
class Speculation:
    """Speculated text not yet used by the program, with its token boundaries when known.

    pieces: token texts joining to `text` (the first may be the tail of a token a fill split);
    finished: the continuation ended by itself (EOS), not at its token limit."""

    text: str
    pieces: Optional[list[str]]
    finished: bool
    key: tuple = ()

    def drop(self, n: int) -> None:
        """Mutates: removes the first n chars (and the token pieces they cover)."""
        self.text = self.text[n:]
        if self.pieces is None:
            return
        while n > 0 and self.pieces:
            head = self.pieces[0]
            if len(head) <= n:
                n -= len(head)
                self.pieces.pop(0)
            else:
                self.pieces[0] = head[n:]
                n = 0

    def consume(self, value: str, on_token_boundary: bool = True) -> bool:
        """A fill of value: matched (True, the text is used up) or not (False, the caller drops this).

        With on_token_boundary the fill must also end where a speculated token ends: a fill that ends
        inside one (a label's trailing space that the model wrote as part of " Warsaw") would leave a
        prompt the API tokenizes differently from the speculated tokens, so the next gen could differ."""
        if not self.text.startswith(value):
            return False
        if on_token_boundary and self.pieces is not None and value:
            end = 0
            for piece in self.pieces:
                end += len(piece)
                if end >= len(value):
                    break
            if end != len(value):
                return False
        self.drop(len(value))
        return True

    def take(self, sp: SamplingParams, check_key: bool = True) -> Optional[tuple[str, dict[str, Any]]]:
        """(text, meta_info) of a gen answered from this text, or None if it cannot be decided here.

        Mutates: the answer is used up. The answer is what the API would have returned for the gen:
        the text of its first max_new_tokens tokens cut at its first stop string."""
        if check_key and self.key != spec_key(sp):
            return None
        max_new = sp.max_new_tokens if sp.max_new_tokens is not None else 128
        window = self.pieces[:max_new] if self.pieces is not None else None
        wtext = "".join(window) if window is not None else self.text
        hit = first_stop(wtext, stop_list(sp))
        if hit is not None:
            comp, finish = wtext[:hit[0]], {"type": "stop", "matched": hit[1]}
        elif window is not None and len(window) >= max_new:
            comp, finish = wtext, {"type": "length", "length": max_new}
        elif self.finished and (window is None or len(window) == len(self.pieces or [])):
            comp, finish = wtext, {"type": "stop", "matched": None}
        else:
            return None
        ntok = None
        if self.pieces is not None:
            ntok, acc = 0, 0
            while acc < len(comp):
                acc += len(self.pieces[ntok])
                ntok += 1
        self.drop(len(comp))
        return comp, {"finish_reason": finish, "completion_tokens": ntok, "api_speculative": True}


@dataclass
class ChatTurn:
    """An assistant turn deferred under chat-model speculation: its fills and gens, in order.

    terms: ("text", str) or ("gen", name, SamplingParams); messages: the chat before the turn."""

    messages: list[dict[str, Any]]
    terms: list[tuple] = field(default_factory=list)

    def gen_names(self) -> list[Any]:
        return [t[1] for t in self.terms if t[0] == "gen"]


class SpeculationMismatch(RuntimeError):
    """The speculated reply does not follow the program's text (or ran out before a gen ended)."""

    def __init__(self, message: str, exhausted: bool):
        super().__init__(message)
        self.exhausted = exhausted


def match_turn(terms: list[tuple], reply: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(text, meta_info) per term of a deferred chat turn, read off one reply; raises SpeculationMismatch."""
    spec = Speculation(reply["text"], list(reply["pieces"]) if reply.get("pieces") is not None else None,
                       bool(reply.get("finished")))
    out: list[tuple[str, dict[str, Any]]] = []
    for i, term in enumerate(terms):
        if term[0] == "text":
            if not spec.consume(term[1], on_token_boundary=False):  # no exact alternative: match the text
                raise SpeculationMismatch(f"term {i} expects {term[1][:60]!r} but the reply has "
                                          f"{spec.text[:60]!r}", exhausted=len(spec.text) < len(term[1])
                                          and term[1].startswith(spec.text) and not spec.finished)
            out.append((term[1], {}))
        else:
            got = spec.take(term[2], check_key=False)
            if got is None:
                raise SpeculationMismatch(f"the reply ran out inside gen {term[1]!r} (term {i})", exhausted=True)
            out.append(got)
    return out


def check_consistent(gens: list[tuple]) -> SamplingParams:
    """The sampling settings of a deferred turn's call: every gen in it must agree (SGLang asserts so)."""
    first = gens[0][2]
    for _, name, sp in gens[1:]:
        if spec_key(sp) != spec_key(first):
            raise ValueError(f"API speculative execution answers a whole assistant turn with one call, so its gens "
                             f"must share sampling settings; gen {name!r} differs from gen {gens[0][1]!r}")
    return first


# ---- the interpreter's two entry points (exe: a StreamExecutor; they mutate it) ----
def spec_gen(exe: Any, sp: SamplingParams) -> tuple[Any, dict[str, Any]]:
    """A gen answered from speculated text, or from a new call of num_api_spec_tokens tokens.

    Mutates exe.spec (what is left of the speculated text)."""
    out = exe.spec.take(sp) if exe.spec is not None else None
    if out is not None:
        return out
    n = max(int(exe.num_api_spec_tokens or 0), sp.max_new_tokens if sp.max_new_tokens is not None else 128)
    res = exe.backend.generate_speculative(exe.text_, sp, n, exe.context())
    exe.spec = Speculation(res["text"], list(res["pieces"]) if res.get("pieces") is not None else None,
                           bool(res.get("finished")), spec_key(sp))
    out = exe.spec.take(sp)
    if out is None:  # token boundaries unknown and no stop in sight: ask for this gen alone
        exe.spec = None
        return exe.backend.generate(exe.text_, sp, exe.context())
    return out


def flush_turn(exe: Any) -> None:
    """Answer exe's deferred assistant turn with one chat call, matched term by term.

    Mutates exe: text_, the turn's gen variables (events set), turn and deferred cleared."""
    from jaxsgl.lang.backend.base import PromptContext

    turn, exe.turn = exe.turn, None
    if turn is None:
        return
    ctx = PromptContext(turn.messages, "assistant", True, list(exe.images_))
    gens = [t for t in turn.terms if t[0] == "gen"]
    if not gens or (len(gens) == 1 and turn.terms[0][0] == "gen"):
        for term in turn.terms:  # nothing to speculate: the API answers a gen that opens the turn exactly
            if term[0] == "text":
                exe.text_ += term[1]
            else:
                exe.set_gen(term[1], *exe.backend.generate(exe.text_, term[2], ctx))
        exe.deferred.clear()
        return
    sp = check_consistent(gens)
    max_tokens = max(int(exe.num_api_spec_tokens or 0),
                     *[g[2].max_new_tokens if g[2].max_new_tokens is not None else 128 for g in gens])
    values, last = None, None
    for _ in range(MAX_CHAT_TRIES):
        reply = exe.backend.generate_speculative(exe.text_, sp, max_tokens, ctx)
        try:
            values = match_turn(turn.terms, reply)
            break
        except SpeculationMismatch as err:
            last = err
            if err.exhausted:
                max_tokens *= 2
            elif not (sp.temperature or 0.0) > 0.0:
                break  # a greedy retry would give the same reply
    if values is None:
        raise RuntimeError(f"API speculative execution: {exe.backend.describe()}'s reply to the assistant turn does "
                           f"not follow the program: {last}. A chat API cannot continue a partial assistant turn, "
                           "so there is no exact fallback: ask for this format in the prompt, raise "
                           "num_api_spec_tokens, or give each gen its own assistant turn")
    for term, (value, meta) in zip(turn.terms, values):
        if term[0] == "text":
            exe.text_ += value
        else:
            exe.set_gen(term[1], value, meta)
    exe.deferred.clear()
