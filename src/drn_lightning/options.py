"""Errors the entry points print as one line, and the argument checks constructors share (`OptionError` names the option)."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


class ExpectedError(Exception):
    """A failure whose message already names the file, option or step: printed as one `error:` line, no traceback."""

    exit_code = 1


class OptionError(ExpectedError, ValueError):
    """An invalid option: `key` as the constructor names it (entry points re-key it as typed), its value and why."""

    exit_code = 2

    def __init__(self, key: str, value: Any, reason: str) -> None:
        super().__init__(key, value, reason)
        self.key, self.value, self.reason = key, value, reason

    def __str__(self) -> str:
        value = self.value  # shown as a config spells it: null, true, false, 'text'
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else repr(value)
        return f"{self.key}={shown}: {self.reason}"


def first_line(err: BaseException) -> str:
    """An error's first message line (ours name the file or option), or its type when it has no message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def integer(value: object, name: str, minimum: int = 0) -> int:
    """An integer (not a bool, not a float) at or above `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise OptionError(name, value, f"must be an integer >= {minimum}")
    return int(value)


def boolean(value: object, name: str) -> bool:
    """true or false, not a string that looks like one."""
    if not isinstance(value, bool):
        raise OptionError(name, value, "must be true or false")
    return value


def fraction(value: object, name: str) -> float:
    """A number in [0, 1): the share of a batch that may be unpaired."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = -1.0
    if isinstance(value, bool) or not 0.0 <= number < 1.0:
        raise OptionError(name, value, "must be in [0, 1)")
    return number


def one_of(value: T, name: str, allowed: Collection[T]) -> T:
    """One of a fixed set of choices, listed in the error."""
    if value not in allowed:
        raise OptionError(name, value, f"allowed: {', '.join(str(a) for a in allowed)}")
    return value
