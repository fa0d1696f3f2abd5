"""The one error type of the constrained-decoding layer."""
from __future__ import annotations


class ConstraintError(ValueError):
    """A constraint that cannot be compiled or used: bad regex/schema/grammar, too large, or unsatisfiable.

    A ValueError, so request validation that already maps ValueError to HTTP 400 keeps working.
    """
