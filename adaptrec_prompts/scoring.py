"""Score mode: log-likelihood of each candidate answer after the same prompt, from the LM's backend.

- A local backend scores when its engine has `score(messages, completions) -> list[float]` (the Hugging
  Face engine does: one prefill, cache reused for all completions).
- An API backend that returns token logprobs (OpenAI and compatible servers) is asked once for its
  answer with `logprobs=True, top_logprobs=20`; the candidates are scored by the log-probability of their
  number at the first token of the answer field. Numbers absent from the top 20 score -inf (ranked last,
  in list order): the ranking below the top-20 is not informative, and the answer is invalid when the
  answer field or a number token cannot be found.
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
        started = time.perf_counter()
        scores = api_number_scores(lm, messages, len(completions))
        timing.add(time.perf_counter() - started)
        return scores
    started = time.perf_counter()
    with_usage = getattr(engine, "score_with_usage", None)
    if with_usage is not None:
        scores, prompt_tokens, completion_tokens = with_usage(messages, list(completions))
    else:
        scores, prompt_tokens, completion_tokens = score(messages, list(completions)), 0, 0
    timing.add(time.perf_counter() - started, prompt_tokens, completion_tokens)
    return list(scores)


def api_number_scores(lm, messages: list[dict], k: int, top_logprobs: int = 20) -> list[float]:
    """First-token logprobs of the candidate numbers 1..k at the start of the answer field.

    Raises:
        ConfigError: the backend returned no logprobs (it cannot score; use generate mode).
    """
    try:
        output = lm(messages=messages, logprobs=True, top_logprobs=top_logprobs)[0]
    except Exception as exc:  # providers without logprobs refuse the request
        raise ConfigError(f"{getattr(lm, 'model', lm)!r} cannot score candidates ({exc}); use mode='generate' "
                          "or a local model (hf:PATH)") from exc
    content = (output.get("logprobs") or {}).get("content") if isinstance(output, dict) else None
    if not content:
        raise ConfigError(f"{getattr(lm, 'model', lm)!r} returned no token logprobs; use mode='generate'")
    text = ""
    for position in content:
        token = position["token"]
        if "## answer ## ]]" in text and text.rstrip(" ").endswith("\n") and token.strip():
            tops = {t["token"].strip(): t["logprob"] for t in position.get("top_logprobs") or []}
            tops.setdefault(token.strip(), position["logprob"])
            return [tops.get(str(i), float("-inf")) for i in range(1, k + 1)]
        text += token
    return [float("-inf")] * k
