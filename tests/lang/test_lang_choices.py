"""The three choices methods on hand-made logprobs, and the frontend's import hygiene."""
from __future__ import annotations

import subprocess
import sys

import pytest

from jaxsgl.lang.choices import (greedy_token_selection, token_length_normalized,
                                 unconditional_likelihood_normalized)

CHOICES = ["organ", "organism", "antidisestablishmentarianism"]
INPUTS = [
    [(-0.1, 1, None)],
    [(-0.1, 1, None), (-0.3, 2, None)],
    [(-0.4, 3, None), (-0.25, 4, None), (-0.1, 5, None), (-0.01, 6, None)],
]
NORMALIZED = [-0.1, -0.2, -0.19]
UNCOND = [
    [(None, 1, None)],
    [(None, 1, None), (-1.5, 2, None)],
    [(None, 3, None), (-0.2, 4, None), (-0.1, 5, None), (-0.3, 6, None)],
]


def call(method, uncond=None):
    return method(choices=CHOICES, normalized_prompt_logprobs=NORMALIZED, input_token_logprobs=INPUTS,
                  output_token_logprobs=[[], [], []], unconditional_token_logprobs=uncond)


def test_token_length_normalized_takes_best_mean():
    assert call(token_length_normalized).decision == "organ"


def test_greedy_token_selection_breaks_ties_with_later_tokens():
    # organ and organism tie on token 0 (-0.1); organ is padded with its mean (-0.1) > -0.3.
    d = call(greedy_token_selection)
    assert d.decision == "organ"
    assert d.meta_info["greedy_logprob_matrix"][0] == [-0.1] * 4


def test_greedy_token_selection_prefers_best_first_token():
    inputs = [[(-2.0, 1, None)], [(-0.5, 2, None), (-9.0, 3, None)]]
    d = greedy_token_selection(choices=["a", "b"], normalized_prompt_logprobs=[-2.0, -4.75],
                               input_token_logprobs=inputs, output_token_logprobs=[[], []])
    assert d.decision == "b"


def test_unconditional_normalization():
    d = call(unconditional_likelihood_normalized, UNCOND)
    scores = d.meta_info["normalized_unconditional_prompt_logprobs"]
    assert scores == pytest.approx([-0.1, (-0.1 + 1.2) / 2, (-0.4 - 0.05 + 0.0 + 0.29) / 4])
    assert d.decision == "organism"
    with pytest.raises(ValueError):
        call(unconditional_likelihood_normalized, None)


def test_lang_never_imports_jax():
    code = ("import sys, jaxsgl, jaxsgl.lang, jaxsgl.lang.backend.runtime; "
            "assert 'jax' not in sys.modules, 'jax imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
