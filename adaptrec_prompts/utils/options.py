"""Numeric settings checked where they are read: one rule per setting, the same message from the command line,
a `--config` file, `RunConfig`, a program file or a library call (docs/failure-behaviour.md).

`check_number` is the library's check; the command line's `number_type` (cli/app.py) wraps the same rule as
an argparse `type=`, so a config file (read through the same types, cli/config_file.py) and the command line
give the same message with the valid range.
"""

from __future__ import annotations

import math

from adaptrec_prompts.errors import ConfigError


def valid_range(low, high) -> str:
    """The valid range in words: ">= LOW" or "between LOW and HIGH"."""
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
        bound = f"> {low}" if above else valid_range(low, high)
        return f"must be {bound}, got {value!r}"
    return None


def check_number(name: str, value, *, low=None, high=None, integer: bool = True, above: bool = False,
                 hint: str = "") -> None:
    """Raise `ConfigError` naming the setting, the valid range and `hint` when `value` is not valid."""
    problem = number_problem(value, low=low, high=high, integer=integer, above=above)
    if problem:
        raise ConfigError(f"{name} {problem}" + (f" ({hint})" if hint else ""))
