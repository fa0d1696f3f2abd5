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
