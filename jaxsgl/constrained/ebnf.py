"""Grammars held by llguidance: a compiled grammar plus a per-request matcher (host masks).

Context-free grammars have no finite token automaton, so they cannot become device tables; each
request keeps an llguidance matcher on the host and its mask is computed per step (tens of
microseconds per request at vocab 49152, see docs/constrained.md). Accepted syntax: Lark (llguidance
dialect, `start: ...`, `/regex/` terminals, `%json {...}`) and GBNF (`root ::= ...`, as SGLang's
`ebnf` parameter and llama.cpp use), converted to Lark by llguidance.

With `grammar_backend="llguidance"` regexes, choices and JSON schemas take this path too
(`EbnfGrammar(source, vocab, kind=...)`): llguidance compiles lazily (milliseconds where
outlines-core's token index takes seconds), at the price of a host mask per step.
"""
from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from jaxsgl.constrained.errors import ConstraintError
from jaxsgl.constrained.spec import JSON_OBJECT_GRAMMAR
from jaxsgl.constrained.vocab import TokenVocab

# Whitespace between JSON tokens when json_whitespace_pattern is None: outlines-core's default
# (`outlines_core.json_schema.WHITESPACE`, as SGLang's outlines backend), used for both backends
# so that one schema means one language whichever backend compiles it.
DEFAULT_JSON_WHITESPACE = r"[ ]?"
_LABELS = {"ebnf": "grammar", "regex": "regex", "choices": "choices", "json_schema": "JSON schema"}

_tokenizer_cache: OrderedDict[str, object] = OrderedDict()
_tokenizer_lock = threading.Lock()


class _VocabTokenizer:
    """The duck-typed tokenizer llguidance's TokenizerWrapper expects, backed by a TokenVocab."""

    def __init__(self, vocab: TokenVocab) -> None:
        self.eos_token_id = vocab.eos_ids[0]
        self.bos_token_id = None
        self.tokens = vocab.token_bytes
        self.special_token_ids = [i for i, b in enumerate(vocab.token_bytes) if not b]
        self._vocab = vocab

    def __call__(self, text: bytes | str) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self._vocab.encode(text)


def ll_tokenizer(vocab: TokenVocab) -> object:
    """llguidance LLTokenizer for vocab (built once per vocab.key: ~0.2 s at 49k tokens)."""
    from llguidance import LLTokenizer, TokenizerWrapper

    with _tokenizer_lock:
        cached = _tokenizer_cache.get(vocab.key)
        if cached is not None:
            _tokenizer_cache.move_to_end(vocab.key)
            return cached
    built = LLTokenizer(TokenizerWrapper(_VocabTokenizer(vocab)), n_vocab=vocab.vocab_size,
                        eos_token=list(vocab.eos_ids))
    with _tokenizer_lock:
        _tokenizer_cache[vocab.key] = built
        while len(_tokenizer_cache) > 4:
            _tokenizer_cache.popitem(last=False)
    return built


def serialize_grammar(kind: str, source: str, json_whitespace_pattern: str | None = None) -> str:
    """llguidance's grammar text for a constraint of `kind` (ConstraintSpec kinds); ValueError if malformed.

    json_whitespace_pattern applies to JSON schemas (None: DEFAULT_JSON_WHITESPACE; "": compact) and,
    when set, to OpenAI's json_object grammar (whose default stays llguidance's flexible whitespace).
    A schema's own "x-guidance" options override the pattern, as in SGLang's llguidance backend.
    """
    from llguidance import LLMatcher, grammar_from

    if kind in ("regex", "choices"):
        return LLMatcher.grammar_from_regex(source)
    if kind == "json_schema" or (source == JSON_OBJECT_GRAMMAR and json_whitespace_pattern is not None):
        schema = source if kind == "json_schema" else '{"type": "object"}'
        pattern = DEFAULT_JSON_WHITESPACE if json_whitespace_pattern is None else json_whitespace_pattern
        return LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_pattern": pattern})
    if kind == "ebnf":
        return grammar_from("ebnf", source)
    raise ConstraintError(f"unknown constraint kind {kind!r}")


class EbnfGrammar:
    """A validated llguidance grammar bound to one vocabulary; immutable and shareable across requests.

    kind: "ebnf" (GBNF or Lark source), or "regex" / "choices" / "json_schema" (the llguidance backend).
    """

    def __init__(self, source: str, vocab: TokenVocab, *, kind: str = "ebnf",
                 json_whitespace_pattern: str | None = None) -> None:
        from llguidance import LLMatcher

        label = _LABELS.get(kind, kind)
        try:
            serialized = serialize_grammar(kind, source, json_whitespace_pattern)
        except ValueError as e:
            raise ConstraintError(f"invalid {label}: {e}") from None
        tokenizer = ll_tokenizer(vocab)
        is_error, messages = LLMatcher.validate_grammar_with_warnings(serialized, tokenizer)
        if is_error:
            raise ConstraintError(f"invalid {label}: {messages[0] if messages else 'rejected by llguidance'}")
        self.kind = kind
        self.source = source
        self.vocab_size = vocab.vocab_size
        self.eos_ids = vocab.eos_ids
        self.warnings: list[str] = list(messages)
        self._serialized = serialized
        self._tokenizer = tokenizer
        # Matchers are made by copying this one (microseconds) rather than re-parsing the grammar.
        self._template = LLMatcher(tokenizer, serialized, log_level=0)
        # The first mask, here on the compile thread: llguidance finds an empty language (a regex no
        # text matches) only then, and a matcher error while the engine builds a step is not per-request.
        mask = np.zeros((vocab.vocab_size + 31) // 32, np.uint32)
        self._template.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
        if self._template.is_error() or not mask.any():
            first_line = (self._template.get_error().splitlines() or ["no token allowed"])[0]
            raise ConstraintError(f"invalid {label}: no output can satisfy it (llguidance: {first_line})")
        self._template_lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """A nominal size for cache accounting (llguidance's own memory is not visible)."""
        return 64 * 1024 + 16 * len(self._serialized)

    def matcher(self) -> EbnfMatcher:
        """A fresh per-request matcher at the grammar's start."""
        with self._template_lock:
            return EbnfMatcher(self._template.deep_copy(), self.vocab_size, self.eos_ids)


class EbnfMatcher:
    """One request's position in an EbnfGrammar; every method mutates only this matcher."""

    def __init__(self, matcher: object, vocab_size: int, eos_ids: tuple[int, ...]) -> None:
        self._m = matcher
        self.vocab_size = vocab_size
        self.eos_ids = eos_ids
        self.words = (vocab_size + 31) // 32

    def fill_mask(self, out: np.ndarray) -> None:
        """Write the allowed-token bits (EOS bits where accepting) into out: uint32[W], C-contiguous."""
        if out.dtype != np.uint32 or out.shape != (self.words,) or not out.flags["C_CONTIGUOUS"]:
            raise ValueError(f"out must be a C-contiguous uint32[{self.words}], got {out.dtype}{out.shape}")
        self._m.unsafe_compute_mask_ptr(out.ctypes.data, out.nbytes)
        if self._m.is_error():
            raise ConstraintError(f"grammar matcher failed: {self._m.get_error()}")

    def consume(self, tokens: list[int]) -> None:
        """Advance past tokens (a final EOS ends the match); ConstraintError if one is not allowed.

        A final EOS on an already terminated matcher is a no-op (llguidance stops by itself once no
        byte can follow, and would otherwise reject that EOS).
        """
        tokens = list(tokens)
        ends = bool(tokens) and tokens[-1] in self.eos_ids
        body = tokens[:-1] if ends else tokens
        if body and not self._m.consume_tokens(body):
            raise ConstraintError(f"token not allowed by the grammar: {self._m.get_error()}")
        if ends and not (self._m.is_stopped() and not self._m.is_error()):
            if not self._m.consume_token(tokens[-1]):
                raise ConstraintError(f"EOS not allowed by the grammar here: {self._m.get_error()}")

    def rollback(self, n: int) -> None:
        """Undo the last n consumed tokens."""
        if n and not self._m.rollback(n):
            raise ConstraintError(f"grammar rollback of {n} tokens failed: {self._m.get_error()}")

    def is_accepting(self) -> bool:
        """The text so far is a complete match (EOS allowed)."""
        return bool(self._m.is_accepting())

    def is_terminated(self) -> bool:
        """No token but EOS can follow (or EOS was consumed)."""
        return bool(self._m.is_stopped())

    def forced_tokens(self) -> list[int]:
        """llguidance's fast-forward tokens: tokens every continuation starts with (canonical tokenization)."""
        return list(self._m.compute_ff_tokens())

    def forced_bytes(self) -> bytes:
        """Bytes every continuation starts with."""
        return bytes(self._m.compute_ff_bytes())
