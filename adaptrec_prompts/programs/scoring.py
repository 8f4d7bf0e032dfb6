"""Score mode: log-likelihood of each candidate answer after the same prompt, from the LM's backend.

- A local backend scores when its engine has `score(messages, completions) -> list[float]` (the Hugging
  Face engine does: one prefill, cache reused for all completions). Exact for any tokenizer.
- An API backend that returns token logprobs (OpenAI and compatible servers) is asked once for its
  answer with `logprobs=True, top_logprobs=20`; the candidates are scored by the log-probability of their
  label at the first token of the answer field. Labels absent from the top 20 score -inf (ranked last,
  in list order): the ranking below the top 20 is not informative, and the answer is invalid when the
  answer field or a label token cannot be found.

  One token must name one candidate. Letters ("A".."T", `labels="letters"`) are single tokens in every
  common tokenizer. Numbers are not: where the tokenizer splits digits (Llama 2, Mistral, Gemma: models
  vLLM and llama.cpp serve), "12" starts with the token "1", so "1" carries candidates 1 and 10-19 and
  "10".."20" never appear. With numbered labels above 9, the scores are refused (ConfigError naming
  `labels="letters"`) unless the LM has shown multi-digit number tokens in its top logprobs (remembered
  per model and server; OpenAI's own models are known to keep numbers whole): `_check_numbers`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import dspy

from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.utils import timing


def score_completions(lm, messages: list[dict], completions: Sequence[str],
                      labels: Sequence[str] | None = None) -> list[float]:
    """Sum of token log-probabilities of each completion after `messages`, from `lm`'s engine; over an API,
    the log-probability of each completion's label (`labels`, in the same order) opening the answer.

    Raises:
        ConfigError: no LM is configured, its backend cannot score, or (API) the labels cannot be scored
            with the server's tokenizer.
    """
    if lm is None:
        raise ConfigError("no LM is configured: call dspy.configure(lm=...) (e.g. adaptrec_prompts.backends.hf_lm(path))")
    engine = getattr(lm, "engine", None)
    score = getattr(engine, "score", None)
    if score is None:
        started = time.perf_counter()
        if labels is None or len(labels) != len(completions):
            raise ConfigError(f"{getattr(lm, 'model', lm)!r} is an API model: its score mode reads one label token "
                              "per candidate, and these candidates have none (labels='titles' answers with whole "
                              "titles); use labels='letters' or mode='generate', or a local model (hf:PATH)")
        scores = api_label_scores(lm, messages, labels)
        timing.add(time.perf_counter() - started)
        return scores
    started = time.perf_counter()
    with_usage = getattr(engine, "score_with_usage", None)
    if with_usage is not None:
        scores, prompt_tokens, completion_tokens = with_usage(messages, list(completions))
    else:
        scores, prompt_tokens, completion_tokens = score(messages, list(completions)), 0, 0
    timing.add(time.perf_counter() - started, prompt_tokens, completion_tokens)
    record_scores(lm, messages, completions, list(scores), prompt_tokens, completion_tokens)
    return list(scores)


def record_scores(lm, messages: list[dict], completions: Sequence[str], scores: Sequence[float],
                  prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
    """Put a local score call in DSPy's LM history (the LM's, the global one and the calling modules'), as
    DSPy records a generate call: the prompt as `messages`, and as the output every completion with its score
    (`lm.inspect_history()`, `program.inspect_history()` and `dspy.inspect_history()` print them). The entry's
    `kwargs` say it was scored: `score_mode=True` and the `completions`. Nothing is recorded when DSPy's
    history is off (`dspy.settings.disable_history`) or the LM keeps none."""
    import datetime
    import uuid

    if not hasattr(lm, "history"):
        return
    from dspy.clients.base_lm import record_history

    lines = [f"score mode: log-likelihood of each of {len(scores)} completions after this prompt (higher is likelier)"]
    for rank, (score, text) in enumerate(sorted(zip(scores, completions, strict=True), key=lambda p: -p[0]), 1):
        shown = text.rstrip("\n").rsplit("\n", 1)[-1]  # the answer line, without the field header
        lines.append(f"{rank:>3}. {score:.3f}  {shown}")
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": prompt_tokens + completion_tokens}
    record_history(lm, {
        "prompt": None, "messages": list(messages), "kwargs": {"score_mode": True, "completions": list(completions)},
        "response": None, "outputs": ["\n".join(lines)], "usage": usage, "cost": None,
        "timestamp": datetime.datetime.now().isoformat(), "uuid": str(uuid.uuid4()),
        "model": getattr(lm, "model", None), "response_model": getattr(lm, "model", None),
        "model_type": getattr(lm, "model_type", None)})


def _openai_tokenizer(lm) -> bool:
    """OpenAI's own GPT / o-series models (no other server): tiktoken keeps numbers below 1000 whole."""
    import os
    import re

    model = str(getattr(lm, "model", ""))
    custom = (getattr(lm, "kwargs", {}) or {}).get("api_base") or os.environ.get("OPENAI_BASE_URL") or \
        os.environ.get("OPENAI_API_BASE")
    return not custom and re.match(r"^(openai/)?(gpt-[345]|o\d)", model) is not None


def _label_of(token: str) -> str:
    """A token as a candidate label: "A", " A", "A." and "A)" all name A."""
    return token.strip().rstrip(".):").strip()


def api_label_scores(lm, messages: list[dict], labels: Sequence[str], top_logprobs: int = 20) -> list[float]:
    """Log-probabilities of the candidate labels at the first token of the answer field (see the module
    docstring). Tokens naming the same label ("A" and " A") are summed as probabilities.

    Raises:
        ConfigError: the backend returned no logprobs (it cannot score; use generate mode), or numbered
            labels above 9 whose first token cannot be told apart (a digit-splitting tokenizer).
    """
    import math

    try:
        output = lm(messages=messages, logprobs=True, top_logprobs=top_logprobs)[0]
    except Exception as exc:  # providers without logprobs refuse the request
        raise ConfigError(f"{getattr(lm, 'model', lm)!r} cannot score candidates ({exc}); use mode='generate' "
                          "or a local model (hf:PATH)") from exc
    content = (output.get("logprobs") or {}).get("content") if isinstance(output, dict) else None
    if not content:
        raise ConfigError(f"{getattr(lm, 'model', lm)!r} returned no token logprobs; use mode='generate'")
    text = ""
    for i, position in enumerate(content):
        token = position["token"]
        if "## answer ## ]]" in text and text.rstrip(" ").endswith("\n") and token.strip():
            tops = [(t["token"], t["logprob"]) for t in position.get("top_logprobs") or []]
            if token not in {t for t, _ in tops}:
                tops.append((token, position["logprob"]))
            if any(len(label) > 1 and label.isdigit() for label in labels):
                _check_numbers(lm, tops, content[i:], labels)
            probability = dict.fromkeys(labels, 0.0)
            for t, logprob in tops:
                if _label_of(t) in probability:
                    probability[_label_of(t)] += math.exp(logprob)
            # a label outside the top logprobs is less likely than the least likely one listed: half of that
            # (ranked below every listed label), not -inf, so score-calibrated differences stay finite
            # (-inf - -inf would be NaN)
            floor = min(logprob for _, logprob in tops) - math.log(2)
            return [math.log(p) if p > 0 else floor for p in probability.values()]
        text += token
    return [float("-inf")] * len(labels)


# (model, server) -> True when its tokenizer was seen keeping numbers whole, False when seen splitting them
_NUMBER_TOKENS: dict[tuple[str, str], bool] = {}


def _check_numbers(lm, tops: list[tuple[str, float]], answer: list[dict], labels: Sequence[str]) -> None:
    """Refuse numbered labels above 9 unless this LM's tokenizer keeps numbers whole.

    Evidence, remembered per (model, server) for the process: a multi-digit number token among the top
    logprobs proves whole numbers; the answer itself writing a number >= 10 as two digit tokens proves
    splitting. OpenAI's own models are known to keep them whole. Without evidence either way (a confident
    model whose top 20 hold single digits only), the scores cannot be trusted and are refused.
    """
    key = (str(getattr(lm, "model", lm)), str((getattr(lm, "kwargs", {}) or {}).get("api_base")))
    if any(_label_of(t).isdigit() and len(_label_of(t)) > 1 for t, _ in tops):
        _NUMBER_TOKENS[key] = True
    elif len(answer) > 1 and _label_of(answer[0]["token"]).isdigit() and answer[1]["token"][:1].isdigit():
        _NUMBER_TOKENS[key] = False
    if _NUMBER_TOKENS.get(key) or (key not in _NUMBER_TOKENS and _openai_tokenizer(lm)):
        return
    raise ConfigError(
        f"{key[0]!r}: candidates are numbered up to {labels[-1]}, but this server's tokenizer "
        + ("writes numbers as single digits" if key in _NUMBER_TOKENS else
           "showed no multi-digit number token yet")
        + ", so the token '1' cannot tell candidate 1 from 10-19. Label the candidates with letters "
        "(labels='letters', --labels letters), or use mode='generate'")


def lm_of(predictor: dspy.Predict):
    """The LM a predictor runs on, as DSPy resolves it: its own (`set_lm`) before the global one."""
    return predictor.lm or dspy.settings.lm
