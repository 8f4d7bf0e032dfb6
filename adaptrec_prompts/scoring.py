"""Score mode: log-likelihood of each candidate answer after the same prompt, from the LM's backend.

A backend scores when its engine has `score(messages, completions) -> list[float]` (the local
Hugging Face engine does: one prefill, cache reused for all completions).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from adaptrec_prompts import timing
from adaptrec_prompts.errors import ConfigError


def score_completions(lm, messages: list[dict], completions: Sequence[str]) -> list[float]:
    """Sum of token log-probabilities of each completion after `messages`, from `lm`'s engine.

    Raises:
        ConfigError: no LM is configured, or its backend cannot score.
    """
    if lm is None:
        raise ConfigError("no LM is configured: call dspy.configure(lm=...) (e.g. adaptrec_prompts.backends.hf_lm(path))")
    engine = getattr(lm, "engine", None)
    score = getattr(engine, "score", None)
    if score is None:
        raise ConfigError(f"score mode needs a backend that can score candidates; {getattr(lm, 'model', lm)!r} "
                          "cannot. Use the local Hugging Face backend (hf:PATH) or mode='generate'.")
    started = time.perf_counter()
    with_usage = getattr(engine, "score_with_usage", None)
    if with_usage is not None:
        scores, prompt_tokens, completion_tokens = with_usage(messages, list(completions))
    else:
        scores, prompt_tokens, completion_tokens = score(messages, list(completions)), 0, 0
    timing.add(time.perf_counter() - started, prompt_tokens, completion_tokens)
    return list(scores)
