"""How `select` picks among choices from their token logprobs (SGLang's three methods).

Each method receives, per choice, the logprobs of the choice's own tokens given the prompt
(`input_token_logprobs`: lists of (logprob, token_id, text) entries) and their mean
(`normalized_prompt_logprobs`); the unconditional method also gets the logprobs of the choice's
tokens with no prompt at all.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, Sequence

Logprob = Sequence[Any]  # (logprob, token_id, text_or_None)


@dataclass
class ChoicesDecision:
    decision: str
    meta_info: Optional[dict[str, Any]] = None


def argmax_first(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties."""
    if not values:
        raise ValueError("argmax of an empty sequence")
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def mean_logprob(entries: Sequence[Logprob]) -> float:
    """Mean of the non-None logprobs in entries (0.0 if there are none)."""
    vals = [float(e[0]) for e in entries if e[0] is not None]
    return sum(vals) / len(vals) if vals else 0.0


class ChoicesSamplingMethod(ABC):
    """Picks one choice from per-choice token logprobs."""

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return False

    @abstractmethod
    def __call__(self, *, choices: list[str], normalized_prompt_logprobs: list[float],
                 input_token_logprobs: list[list[Logprob]], output_token_logprobs: list[list[Logprob]],
                 unconditional_token_logprobs: Optional[list[list[Logprob]]] = None) -> ChoicesDecision:
        ...

    def __repr__(self) -> str:
        return type(self).__name__


def _meta(normalized: list[float], inputs: list[list[Logprob]], outputs: list[list[Logprob]],
          **extra: Any) -> dict[str, Any]:
    return {"normalized_prompt_logprobs": normalized, "input_token_logprobs": inputs,
            "output_token_logprobs": outputs, **extra}


class TokenLengthNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean logprob over its tokens (SGLang's default)."""

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        best = argmax_first(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], _meta(normalized_prompt_logprobs, input_token_logprobs,
                                                    output_token_logprobs))


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token: keep those with the best logprob at position 0, then 1, ...

    A choice shorter than the longest is padded with its own mean logprob, so a prefix option
    ("organ") can still be compared with a longer one ("organism") at later positions.
    """

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        width = max(len(x) for x in input_token_logprobs)
        matrix = []
        for entries in input_token_logprobs:
            row = [float(e[0]) if e[0] is not None else 0.0 for e in entries]
            pad = sum(row) / len(row) if row else float("nan")
            matrix.append(row + [pad] * (width - len(row)))
        alive = list(range(len(choices)))
        for j in range(width):
            best = max(matrix[i][j] for i in alive)
            alive = [i for i in alive if matrix[i][j] == best]
            if len(alive) == 1:
                break
        return ChoicesDecision(choices[alive[0]], _meta(normalized_prompt_logprobs, input_token_logprobs,
                                                        output_token_logprobs, greedy_logprob_matrix=matrix))


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """The choice with the highest mean of (logprob given the prompt - logprob with no prompt).

    The unconditional logprob of a choice's first token is undefined (None) and counts as 0.
    """

    @property
    def requires_unconditional_logprobs(self) -> bool:
        return True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
                 unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional token logprobs")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            if len(cond) != len(uncond):
                raise ValueError("conditional and unconditional logprobs must have the same length")
            diffs = [float(c[0] or 0.0) - float(u[0] or 0.0) for c, u in zip(cond, uncond)]
            scores.append(sum(diffs) / len(diffs) if diffs else 0.0)
        best = argmax_first(scores)
        return ChoicesDecision(choices[best], _meta(
            normalized_prompt_logprobs, input_token_logprobs, output_token_logprobs,
            unconditional_token_logprobs=unconditional_token_logprobs,
            normalized_unconditional_prompt_logprobs=scores))


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
