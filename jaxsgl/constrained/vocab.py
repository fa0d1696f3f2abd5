"""TokenVocab: the model vocabulary as raw bytes, built once per tokenizer (host only, no JAX).

Constraints are matched on bytes, so every token id is mapped to the exact bytes it appends to the
output. Two vocabulary styles are decoded:

- byte-level BPE (GPT-2, Llama-3, Qwen, SmolLM): each byte is drawn as one printable unicode char
  (`Ġ` is a space); the inverse of GPT-2's `bytes_to_unicode` gives the bytes back.
- SentencePiece (Llama-2, Mistral): `▁` is a space and `<0xNN>` is the raw byte NN.

Special tokens and ids past the tokenizer's length (the model's vocab may be padded) map to b"",
which the compilers never allow inside a constraint; EOS is handled separately through `eos_ids`.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

_SP_BYTE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SP_SPACE = "\u2581"  # ▁


def gpt2_unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable char -> byte value."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    byte_values, chars, shift = printable[:], printable[:], 0
    for b in range(256):
        if b not in printable:
            byte_values.append(b)
            chars.append(256 + shift)
            shift += 1
    return {chr(c): b for b, c in zip(byte_values, chars)}


_GPT2_DECODER = gpt2_unicode_to_byte()


def _byte_level_bytes(piece: str) -> bytes:
    try:
        return bytes(_GPT2_DECODER[ch] for ch in piece)
    except KeyError:  # not a byte-level piece (e.g. an added token): take its text
        return piece.encode("utf-8")


def _sentencepiece_bytes(piece: str) -> bytes:
    m = _SP_BYTE.match(piece)
    if m:
        return bytes([int(m.group(1), 16)])
    return piece.replace(_SP_SPACE, " ").encode("utf-8")


def _greedy_encoder(token_bytes: Sequence[bytes]) -> Callable[[str], list[int]]:
    """Longest-match tokenizer over token_bytes (used for hand-made test vocabularies)."""
    by_bytes: dict[bytes, int] = {}
    for i, b in enumerate(token_bytes):
        if b and b not in by_bytes:
            by_bytes[b] = i
    longest = max((len(b) for b in by_bytes), default=1)

    def encode(text: str) -> list[int]:
        data, out, pos = text.encode("utf-8"), [], 0
        while pos < len(data):
            for size in range(min(longest, len(data) - pos), 0, -1):
                tid = by_bytes.get(data[pos : pos + size])
                if tid is not None:
                    out.append(tid)
                    pos += size
                    break
            else:
                raise ValueError(f"byte {data[pos]:#x} at {pos} has no token in this vocabulary")
        return out

    return encode


class TokenVocab:
    """Token id -> bytes for a model vocabulary, plus EOS ids and the tokenizer's encode.

    `token_bytes` has exactly `vocab_size` entries (b"" for special and unused ids); `key` is a
    stable identity (sha1 of the bytes and EOS ids) used in compile-cache keys.
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        eos_ids: Iterable[int],
        encode: Callable[[str], list[int]] | None = None,
    ) -> None:
        self.token_bytes: list[bytes] = list(token_bytes)
        self.vocab_size: int = len(self.token_bytes)
        self.eos_ids: tuple[int, ...] = tuple(sorted({int(i) for i in eos_ids}))
        if not self.eos_ids:
            raise ValueError("a TokenVocab needs at least one EOS id")
        bad = [i for i in self.eos_ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"eos ids {bad} outside the vocabulary [0, {self.vocab_size})")
        for i in self.eos_ids:
            self.token_bytes[i] = b""  # EOS is never part of a constraint's text
        self._encode = encode if encode is not None else _greedy_encoder(self.token_bytes)
        digest = hashlib.sha1()
        digest.update(f"{self.vocab_size}:{self.eos_ids}".encode())
        for b in self.token_bytes:
            digest.update(len(b).to_bytes(4, "little"))
            digest.update(b)
        self.key: str = digest.hexdigest()

    @classmethod
    def from_tokenizer(cls, hf_tokenizer: Any, vocab_size: int, eos_ids: Iterable[int]) -> TokenVocab:
        """Bytes of every token of a Hugging Face tokenizer, padded with b"" to the model's vocab_size."""
        n_tok = len(hf_tokenizer)
        if vocab_size < n_tok:
            raise ValueError(f"model vocab_size {vocab_size} < tokenizer length {n_tok}")
        pieces: list[str | None] = list(hf_tokenizer.convert_ids_to_tokens(list(range(n_tok))))
        special = set(getattr(hf_tokenizer, "all_special_ids", []) or [])
        added_text: dict[int, str] = {}
        for tid, added in (getattr(hf_tokenizer, "added_tokens_decoder", None) or {}).items():
            if getattr(added, "special", False):
                special.add(int(tid))
            else:
                added_text[int(tid)] = str(added.content if hasattr(added, "content") else added)
        to_bytes = _byte_level_bytes if _is_byte_level(hf_tokenizer, pieces) else _sentencepiece_bytes
        token_bytes = [b""] * vocab_size
        for tid, piece in enumerate(pieces):
            if tid in special or piece is None:
                continue
            token_bytes[tid] = added_text[tid].encode("utf-8") if tid in added_text else to_bytes(piece)

        def encode(text: str) -> list[int]:
            return list(hf_tokenizer.encode(text, add_special_tokens=False))

        return cls(token_bytes, eos_ids, encode)

    def encode(self, text: str) -> list[int]:
        """Token ids of text, without BOS or other special tokens."""
        return self._encode(text)

    def decode_bytes(self, token_ids: Iterable[int]) -> bytes:
        """Concatenated bytes of token_ids (EOS and special ids add nothing)."""
        return b"".join(self.token_bytes[t] for t in token_ids)

    def __repr__(self) -> str:
        return f"TokenVocab(vocab_size={self.vocab_size}, eos_ids={self.eos_ids}, key={self.key[:12]})"


def _is_byte_level(hf_tokenizer: Any, pieces: Sequence[str | None]) -> bool:
    """True for GPT-2-style byte-level BPE; False for SentencePiece-style pieces."""
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    decoder = repr(getattr(backend, "decoder", None)) if backend is not None else ""
    if "ByteLevel" in decoder:
        return True
    if "ByteFallback" in decoder or "Metaspace" in decoder or _SP_SPACE in decoder:
        return False
    sample = [p for p in pieces[:5000] if p]
    sp_votes = sum(1 for p in sample if _SP_SPACE in p or _SP_BYTE.match(p))
    bl_votes = sum(1 for p in sample if "Ġ" in p or "Ċ" in p)
    return bl_votes >= sp_votes
