"""Progress bars: one style, and one rule for when they show.

Every step that can take more than a few seconds (embedding a training pool, the Stage-1 queries, an
evaluation run, a fine-tuning run, loading a model) reports through `bar`: a tqdm bar with the count, the
rate and the time left, on stderr, so stdout keeps only what a command prints as its result.

A bar shows when all of these hold (`enabled`):

- the caller asked for one (`progress=True`, the library default; `--no-progress` on the command line);
- stderr is a terminal, or the code runs in a Jupyter kernel (whose stderr is not a terminal, but shows
  tqdm's notebook bar): a bar written to a log file or a pipe is hundreds of carriage-return updates that
  nobody reads;
- the `CI` environment variable is not set to a true value (GitHub Actions, GitLab CI and most CI systems
  set `CI=true`), so CI logs stay clean even when a CI runner allocates a terminal.

Libraries that draw their own bars (transformers' "Loading weights" while a model loads) are switched by
`library_bars` with the same rule, so `--no-progress` silences them too.

This module imports nothing heavy at import time (tqdm is imported when a bar is made).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

FALSE_WORDS = ("", "0", "false", "no", "off")


def in_ci() -> bool:
    """Whether the `CI` environment variable says this runs under continuous integration."""
    return os.environ.get("CI", "").strip().lower() not in FALSE_WORDS


def _in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (tqdm.auto then draws a notebook widget, not text)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # an IPython without get_ipython, or one that fails outside a shell
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _stderr_is_terminal() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False


def enabled(progress: bool = True) -> bool:
    """Whether a bar should show: asked for, stderr a terminal (or a notebook), and not under CI."""
    return bool(progress) and not in_ci() and (_stderr_is_terminal() or _in_notebook())


def bar(iterable: Iterable | None = None, *, desc: str, total: int | None = None, unit: str = "it",
        progress: bool = True, initial: int = 0, leave: bool = False):
    """A tqdm bar in the package's style: `desc: 40%|####      | 40/100 [00:12<00:18, 3.30example/s]`.

    Use it as tqdm (iterate it, or `.update(n)` and `.close()`, or as a context manager); when `enabled`
    says no it is a disabled tqdm, which counts but draws nothing.

    Args:
        iterable: what to iterate, or None for a manual bar (`update`).
        desc: what is being done (a run's name, "embed train", ...).
        total: how many units (default: len(iterable) when it has one).
        unit: what one unit is ("example", "history", "query").
        progress: the caller's wish (`--no-progress` makes it False).
        initial: units already done (a resumed run starts its bar there).
        leave: keep the finished bar on screen; off by default, since each step prints its own result line.
    """
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, leave=leave,
                disable=not enabled(progress), dynamic_ncols=True, file=sys.stderr)


@contextmanager
def library_bars(progress: bool = True) -> Iterator[None]:
    """Within the block, transformers' own bars (e.g. "Loading weights", "Writing model shards") follow
    `enabled(progress)`: off unless our bars would show. The previous settings (transformers' and
    huggingface_hub's, which transformers switches together) are restored afterwards.

    Only for code that uses transformers anyway: it imports transformers when the bars are to be off."""
    if enabled(progress):
        yield
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    transformers_on, hub_off = hf_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if transformers_on:
            hf_logging.enable_progress_bar()
        if hub_off != hub_utils.are_progress_bars_disabled():
            (hub_utils.disable_progress_bars if hub_off else hub_utils.enable_progress_bars)()
