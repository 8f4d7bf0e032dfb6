"""Numeric settings checked where they are read: one rule per setting, the same message from the command line,
a `--config` file, `RunConfig`, a program file or a library call (docs/failure-behaviour.md).

`check_number` is the library's check; `number_type` wraps it as an argparse `type=`, so a config file (read
through the same types, config_file.py) and the command line give the same message with the valid range.
"""

from __future__ import annotations

import argparse
import math

from adaptrec_prompts.errors import ConfigError


def _range(low, high) -> str:
    if high is None:
        return f">= {low}"
    return f"between {low} and {high}"


def number_problem(value, *, low=None, high=None, integer: bool = True, above: bool = False) -> str | None:
    """Why `value` is not a valid setting (None when it is): its type, or the valid range in words.

    `above`: the low end is excluded (a timeout must be > 0)."""
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        return f"expected {kind}, got {value!r}"
    if not integer and not math.isfinite(value):
        return f"expected a finite number, got {value!r}"
    if low is not None and (value <= low if above else value < low) or high is not None and value > high:
        bound = f"> {low}" if above else _range(low, high)
        return f"must be {bound}, got {value!r}"
    return None


def check_number(name: str, value, *, low=None, high=None, integer: bool = True, above: bool = False,
                 hint: str = "") -> None:
    """Raise `ConfigError` naming the setting, the valid range and `hint` when `value` is not valid."""
    problem = number_problem(value, low=low, high=high, integer=integer, above=above)
    if problem:
        raise ConfigError(f"{name} {problem}" + (f" ({hint})" if hint else ""))


def number_type(low=None, high=None, *, integer: bool = True, above: bool = False):
    """An argparse `type=`: parse the text, then apply `number_problem`'s rule (message: the valid range)."""

    def parse(text: str):
        try:
            value = int(text) if integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole' if integer else 'a'} number "
                                             f"{_range(low, high) if not above else f'> {low}'}, got {text!r}") from None
        problem = number_problem(value, low=low, high=high, integer=integer, above=above)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid number value"
    return parse
