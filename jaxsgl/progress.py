"""Progress bars on stderr (tqdm) for the waits a user sees: GGUF conversion, weight loading, compiles.

    for spec in progress(specs, desc="loading weights", unit="tensor"):
        ...

Bars show only when stderr is a terminal (tqdm's disable=None), so CI logs and pipes stay
clean. JAXSGL_PROGRESS=1 forces them on (e.g. under `script` or in a notebook), =0 off.
Without tqdm installed every helper is a silent pass-through. Nothing here imports JAX.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")
ENV = "JAXSGL_PROGRESS"


def _disable() -> bool | None:
    """tqdm's `disable`: None (auto: off unless stderr is a TTY), or forced by $JAXSGL_PROGRESS."""
    value = os.environ.get(ENV, "").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return False
    if value in ("0", "false", "no", "off"):
        return True
    return None


class _NoBar:
    """Stands in for a tqdm bar when tqdm is missing: every call is a no-op."""

    def __init__(self, iterable: Iterable | None = None, total: float | None = None, **_: Any) -> None:
        self.iterable = iterable
        self.total = total

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def update(self, n: float = 1) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def refresh(self) -> None:
        return None

    def close(self) -> None:
        return None


def progress(iterable: Iterable[T] | None = None, *, desc: str, total: float | None = None, unit: str = "it",
             unit_scale: bool = False, leave: bool = False) -> Any:
    """A tqdm bar on stderr over `iterable` (or a manual one: use .update(n) as a context manager).

    Mutates nothing but the terminal; the bar disappears when done unless leave=True."""
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with transformers; stay silent without it
        return _NoBar(iterable, total)
    return tqdm(iterable, desc=desc, total=total, unit=unit, unit_scale=unit_scale, leave=leave,
                file=sys.stderr, disable=_disable(), dynamic_ncols=True)


def enabled() -> bool:
    """Whether a bar made now would show (for callers that want to skip work done only for the bar)."""
    forced = _disable()
    if forced is not None:
        return not forced
    return bool(getattr(sys.stderr, "isatty", lambda: False)())
