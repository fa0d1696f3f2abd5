"""TokenVocab: byte-level BPE and SentencePiece vocabularies as raw bytes."""
from __future__ import annotations

import pytest

from jaxsgl.constrained import TokenVocab
from jaxsgl.constrained.vocab import gpt2_unicode_to_byte


def test_gpt2_byte_decoder_is_a_bijection():
    table = gpt2_unicode_to_byte()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 32 and table["Ċ"] == 10 and table["!"] == 33


def test_smollm2_token_bytes_reassemble_text(smol_vocab, smol_tokenizer):
    assert smol_vocab.vocab_size == 49152 and smol_vocab.eos_ids == (smol_tokenizer.eos_token_id,)
    specials = set(smol_tokenizer.all_special_ids) | set(range(17))  # SmolLM2's added special tokens
    assert all(smol_vocab.token_bytes[i] == b"" for i in specials)
    for text in ['{"name": "Ål", "age": 3}\n', " héllo wörld 日本語 🙂", "\t  x  \r\n", "a" * 40]:
        ids = smol_vocab.encode(text)
        assert ids == smol_tokenizer.encode(text, add_special_tokens=False)
        assert smol_vocab.decode_bytes(ids) == text.encode("utf-8")
    assert smol_vocab.token_bytes[smol_vocab.encode(" hello")[0]] == b" hello"


def test_key_is_stable_and_distinguishes(smol_vocab, smol_tokenizer):
    again = TokenVocab.from_tokenizer(smol_tokenizer, 49152, [smol_tokenizer.eos_token_id])
    assert again.key == smol_vocab.key
    padded = TokenVocab.from_tokenizer(smol_tokenizer, 49160, [smol_tokenizer.eos_token_id])
    assert padded.key != smol_vocab.key and padded.token_bytes[49152:] == [b""] * 8
    other_eos = TokenVocab.from_tokenizer(smol_tokenizer, 49152, [0, 2])
    assert other_eos.key != smol_vocab.key and other_eos.eos_ids == (0, 2)
    with pytest.raises(ValueError):
        TokenVocab.from_tokenizer(smol_tokenizer, 100, [2])


class _FakeSentencePiece:
    """Just enough of a Llama-2-style HF tokenizer: ▁ for spaces, <0xNN> byte-fallback tokens."""

    pieces = ["<unk>", "<s>", "</s>", "<0x0A>", "<0xC3>", "<0xA9>", "▁hello", "▁", "world", "é", "▁w"]
    all_special_ids = [0, 1, 2]
    added_tokens_decoder: dict = {}

    class backend_tokenizer:  # noqa: N801 - mimics the attribute name
        decoder = "Sequence(decoders=[Replace(pattern=String(\"▁\"), content=\" \"), ByteFallback(), Fuse()])"

    def __len__(self) -> int:
        return len(self.pieces)

    def convert_ids_to_tokens(self, ids):
        return [self.pieces[i] for i in ids]

    def encode(self, text, add_special_tokens=False):
        return [6] if text == " hello" else []


def test_sentencepiece_pieces_decode_to_bytes():
    vocab = TokenVocab.from_tokenizer(_FakeSentencePiece(), 16, [2])
    assert vocab.token_bytes[:11] == [b"", b"", b"", b"\n", b"\xc3", b"\xa9", b" hello", b" ", b"world",
                                      "é".encode(), b" w"]
    assert vocab.token_bytes[11:] == [b""] * 5
    assert vocab.encode(" hello") == [6]


def test_custom_vocab_greedy_encode(ascii_vocab):
    ids = ascii_vocab.encode('{"name": 12}')
    assert ascii_vocab.decode_bytes(ids) == b'{"name": 12}'
    assert ascii_vocab.token_bytes[ids[0]] == b'{"'  # longest match
    with pytest.raises(ValueError):
        TokenVocab([b"a"], [])
