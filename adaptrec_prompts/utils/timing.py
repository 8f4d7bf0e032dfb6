"""Per-example LM clocks: time spent inside LM calls and tokens, kept in a context variable so that
threads (one example each) never mix their numbers. DSPy LM calls are timed by a callback; score-mode
calls report themselves (scoring.score_completions)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from dspy.utils.callback import BaseCallback


@dataclass
class Clock:
    lm_seconds: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0


_current: ContextVar[Clock | None] = ContextVar("adaptrec_lm_clock", default=None)


@contextmanager
def measure():
    """Collect LM time and tokens of the calls made inside the block (in this thread/context)."""
    clock = Clock()
    token = _current.set(clock)
    try:
        yield clock
    finally:
        _current.reset(token)


def add(seconds: float, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
    clock = _current.get()
    if clock is not None:
        clock.lm_seconds += seconds
        clock.prompt_tokens += prompt_tokens
        clock.completion_tokens += completion_tokens
        clock.calls += 1


class LMTimer(BaseCallback):
    """DSPy callback that adds each LM call's duration to the current clock."""

    def __init__(self):
        self._starts: dict[str, float] = {}
        self._lock = threading.Lock()

    def on_lm_start(self, call_id, instance, inputs):
        with self._lock:
            self._starts[call_id] = time.perf_counter()

    def on_lm_end(self, call_id, outputs, exception):
        with self._lock:
            started = self._starts.pop(call_id, None)
        if started is not None:
            add(time.perf_counter() - started)

    def in_flight(self) -> dict[str, float]:
        """The LM calls not finished yet: call id -> seconds since it started."""
        now = time.perf_counter()
        with self._lock:
            return {call_id: now - started for call_id, started in self._starts.items()}
