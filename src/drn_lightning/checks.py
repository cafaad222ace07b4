"""Argument checks shared by constructors; errors start with `name=value`, so entry points can name the option typed."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def integer(value: object, name: str, minimum: int = 0) -> int:
    """An integer (not a bool, not a float) at or above `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")
    return int(value)


def fraction(value: object, name: str) -> float:
    """A number in [0, 1): the share of a batch that may be unpaired."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0.0 <= number < 1.0:
        raise ValueError(f"{name}={value!r} must be in [0, 1)")
    return number


def one_of(value: T, name: str, allowed: Collection[T]) -> T:
    """One of a fixed set of choices, listed in the error."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; allowed: {', '.join(str(a) for a in allowed)}")
    return value
