"""OutputText: incremental decoding equals a full decode; stop strings across token boundaries."""
from __future__ import annotations

import pytest

from jaxsgl.engine.detokenize import OutputText


@pytest.fixture(scope="module")
def tok(default_model_dir):
    from jaxsgl.tokenizer import load_tokenizer

    return load_tokenizer(default_model_dir)


def test_incremental_text_equals_full_decode(tok):
    text = "Héllo wörld! 日本語 🎉 def f(x):\n    return x ** 2  # done"
    ids = tok.encode(text)
    out = OutputText(tok, [])
    seen = []
    for t in ids:
        out.append(t)
        seen.append(out.visible())
    out.flush()
    assert out.text == tok.decode(ids, skip_special_tokens=True)
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))  # text only ever grows
    assert all("\ufffd" not in s for s in seen)  # no half characters shown


def test_stop_string_spanning_tokens_is_trimmed_and_held_back(tok):
    ids = tok.encode("The answer is 42. Next question: why?")
    out = OutputText(tok, ["question:"])
    shown = []
    for t in ids:
        out.append(t)
        shown.append(out.visible())
        if out.stopped_at:
            break
    assert out.stopped_at == "question:" and out.text == "The answer is 42. Next "
    assert all("question" not in s and not s.endswith("quest") for s in shown)


@pytest.mark.parametrize("stop", [[], ["question:"], ["日本"]])
def test_extend_equals_appending_one_by_one(tok, stop):
    """Jump-forward appends its tokens with one decode (OutputText.extend): the text after each chunk,
    what visible() holds back, and where a stop string cuts are exactly those of token-by-token appends."""
    import random

    text = 'Héllo wörld! {"name": "日本語 🎉", "answer": 42} Next question: why? def f(x):\n    return x ** 2'
    ids = tok.encode(text)
    rng = random.Random(0)
    for trial in range(20):
        one, many, i = OutputText(tok, stop), OutputText(tok, stop), 0
        while i < len(ids):
            k = rng.randint(1, 12)
            chunk = ids[i:i + k]
            for t in chunk:
                one.append(t)
            many.extend(chunk)
            i += k
            assert (many.text, many.visible(), many.stopped_at) == (one.text, one.visible(), one.stopped_at)
        one.flush()
        many.flush()
        assert many.text == one.text
    if not stop:
        assert many.text == tok.decode(ids, skip_special_tokens=True)


def test_backend_decode_gives_what_the_tokenizer_gives(tok):
    """OutputText decodes with the Rust tokenizer directly (backend_decode): the same strings as
    tokenizer.decode, special tokens and broken UTF-8 windows included."""
    import numpy as np

    from jaxsgl.engine.detokenize import backend_decode

    fast = backend_decode(tok)
    assert fast is not None  # the default model's tokenizer is fast and does not clean up spaces
    rng = np.random.default_rng(0)
    specials = list(tok.all_special_ids)
    for _ in range(200):
        ids = rng.integers(0, len(tok), int(rng.integers(1, 12))).tolist()
        if rng.random() < 0.3:
            ids.insert(int(rng.integers(len(ids) + 1)), int(rng.choice(specials)))
        for skip in (True, False):
            assert fast(ids, skip_special_tokens=skip) == tok.decode(ids, skip_special_tokens=skip)

    class Slow:  # a tokenizer that cleans up spaces keeps its own decode
        is_fast, clean_up_tokenization_spaces, backend_tokenizer = True, True, object()
    assert backend_decode(Slow()) is None and backend_decode(None) is None


def test_without_a_tokenizer_only_ids_are_kept():
    out = OutputText(None, ["x"])
    for t in (5, 6, 7):
        out.append(t)
    out.flush()
    assert out.ids == [5, 6, 7] and out.text == "" and out.stopped_at is None


@pytest.mark.parametrize("skip", [True, False])
def test_decode_stream_grows_the_same_text_as_window_decodes(tok, skip):
    """OutputText's Rust incremental decoder (decode_stream) against its two-window-decode path: the
    same text after every token, through extend() and flush(), on random ids (special tokens, pieces
    of multi-byte characters) and on real text."""
    import numpy as np

    rng = np.random.default_rng(1)
    specials = list(tok.all_special_ids)
    text_ids = tok.encode("Héllo wörld! 日本語 🎉 naïve café — “quotes” and 𝔘𝔫𝔦𝔠𝔬𝔡𝔢. def f(x): return x ** 2")
    for trial in range(120):
        if trial % 3 == 0:
            ids = text_ids[int(rng.integers(0, 5)):]
        else:
            ids = rng.integers(0, len(tok), int(rng.integers(1, 40))).tolist()
            for _ in range(int(rng.integers(0, 3))):
                ids.insert(int(rng.integers(len(ids) + 1)), int(rng.choice(specials)))
        fast, slow = OutputText(tok, [], skip), OutputText(tok, [], skip)
        slow._stream = None
        assert fast._stream is not None
        i = 0
        while i < len(ids):
            k = int(rng.integers(1, 4))
            for out in (fast, slow):
                out.extend(ids[i:i + k]) if k > 1 else out.append(ids[i])
            assert fast.text == slow.text, (trial, ids[:i + k])
            i += k
        fast.flush()
        slow.flush()
        assert fast.text == slow.text, (trial, ids)
