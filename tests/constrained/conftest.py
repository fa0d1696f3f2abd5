"""Fixtures: the real SmolLM2 vocabulary (49152 tokens) and a small hand-made ASCII vocabulary."""
from __future__ import annotations

import random
import string
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # corpus.py, walks.py

from jaxsgl.constrained import TokenVocab  # noqa: E402

ASCII_EOS = 0


@pytest.fixture(scope="session")
def smol_tokenizer(default_model_dir):
    from jaxsgl.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir)


@pytest.fixture(scope="session")
def smol_vocab(smol_tokenizer) -> TokenVocab:
    return TokenVocab.from_tokenizer(smol_tokenizer, 49152, [smol_tokenizer.eos_token_id])


def make_ascii_vocab(seed: int = 0, extra: int = 200) -> TokenVocab:
    """~300 tokens: id 0 is EOS, then every printable ASCII char, \\n, \\t, and multi-char strings."""
    rng = random.Random(seed)
    singles = [c.encode() for c in string.printable if c not in "\r\x0b\x0c"]
    multi: set[bytes] = set()
    alphabet = string.ascii_letters + string.digits + ' ,.:"{}[]-+_'
    for word in ["yes", "no", "True", "False", "true", "false", "null", "foo", "bar", "hello", " world",
                 '{"', '":', '",', '"}', "name", "age", "ab", "abc", "12", "123", "0.", ".5", " \n"]:
        multi.add(word.encode())
    while len(multi) < extra:
        multi.add("".join(rng.choice(alphabet) for _ in range(rng.randint(2, 5))).encode())
    tokens = [b""] + singles + sorted(multi) + [b""] * 3  # trailing unused ids, like a padded model vocab
    return TokenVocab(tokens, [ASCII_EOS])


@pytest.fixture(scope="session")
def ascii_vocab() -> TokenVocab:
    return make_ascii_vocab()
