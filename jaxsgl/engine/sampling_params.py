"""SamplingParams: one request's sampling settings, parsed and validated on the host (SGLang's names)."""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, fields
from typing import Any

from jaxsgl.constrained.spec import ConstraintSpec, constraint_from_params


_INT_FIELDS = ("max_new_tokens", "min_new_tokens", "top_k", "n")
_FLOAT_FIELDS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # eos / stop_token_ids are masked, and stop strings ignored, before this many
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # <= 0: off
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    n: int = 1
    seed: int | None = None
    # constrained decoding (at most one of these; jaxsgl/constrained): the output must match
    regex: str | None = None
    json_schema: str | dict | None = None
    ebnf: str | None = None
    choices: list[str] | None = None
    stop_regex: list[str] = field(default_factory=list)  # stop once the output contains a match

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "SamplingParams":
        """Parse a user dict; unknown keys and bad values raise ValueError (nothing is ignored)."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown sampling params {sorted(unknown)}; known: {sorted(known)}")
        if not isinstance(d.get("stop") or [], (str, list)):
            raise ValueError(f"stop must be a string or a list of strings, got {d.get('stop')!r}")
        if isinstance(d.get("stop"), str):
            d["stop"] = [d["stop"]]
        d["stop"] = list(d.get("stop") or [])
        ids = d.get("stop_token_ids") or []
        if not isinstance(ids, list) or any(not isinstance(t, int) or isinstance(t, bool) for t in ids):
            raise ValueError(f"stop_token_ids must be a list of integers, got {ids!r}")
        d["stop_token_ids"] = list(ids)
        if isinstance(d.get("stop_regex"), str):
            d["stop_regex"] = [d["stop_regex"]]
        d["stop_regex"] = list(d.get("stop_regex") or [])
        p = cls(**d)
        p.validate()
        return p

    def _check_types(self) -> None:
        for name in _INT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{name} must be an integer, got {v!r}")
        for name in _FLOAT_FIELDS:
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ValueError(f"{name} must be a number, got {v!r}")
        for name in ("ignore_eos", "skip_special_tokens"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a boolean, got {getattr(self, name)!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")

    def validate(self) -> None:
        self._check_types()
        if self.max_new_tokens is None or self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.min_new_tokens is None or not 0 <= self.min_new_tokens:
            raise ValueError(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens ({self.min_new_tokens}) exceeds max_new_tokens ({self.max_new_tokens})")
        if not self.temperature >= 0:  # (NaN fails too)
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not (-2 <= self.frequency_penalty <= 2 and -2 <= self.presence_penalty <= 2):
            raise ValueError("frequency_penalty and presence_penalty must be in [-2, 2]")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop}")
        for r in self.stop_regex:
            try:
                re.compile(r)
            except (re.error, TypeError) as e:
                raise ValueError(f"invalid stop_regex {r!r}: {e}") from None
        self.constraint  # noqa: B018 (parses the constraint: a malformed one raises here)

    @functools.cached_property
    def constraint(self) -> ConstraintSpec | None:
        """The output constraint (regex / json_schema / ebnf / choices), normalised; None if free."""
        return constraint_from_params(regex=self.regex, json_schema=self.json_schema, ebnf=self.ebnf,
                                      choices=self.choices)

    @functools.cached_property
    def device_row(self) -> tuple:
        """This request's row of the step's sampling arrays (build_sampling_input), computed once:
        (temperature, 0 when greedy; top_p; top_k; min_p; frequency, presence and repetition
        penalties; seed mod 2**32; uses_penalties). Params do not change once a request is made."""
        return (0.0 if self.greedy else self.temperature, self.top_p, self.top_k, self.min_p,
                self.frequency_penalty, self.presence_penalty, self.repetition_penalty, self.seed % 2**32,
                self.uses_penalties)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def uses_penalties(self) -> bool:
        return self.frequency_penalty != 0 or self.presence_penalty != 0 or self.repetition_penalty != 1
