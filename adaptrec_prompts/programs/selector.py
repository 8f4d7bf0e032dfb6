"""Stage 2: `UserSelector`, the LM keeps the M pool users most similar to the target user.

Its modes, and the completions Stage-2 score mode ranks (`stage2_completions`, also what the self-adaptive
fine-tuning callback scores: finetune/callbacks.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import dspy
from dspy.utils.exceptions import AdapterParseError

from adaptrec_prompts.data.render import Template, as_template, check_titles
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.chat_adapters import adapter_for, check_prompt
from adaptrec_prompts.programs.parsing import parse_selection
from adaptrec_prompts.programs.scoring import lm_of, score_completions
from adaptrec_prompts.programs.signatures import SelectSimilarUsers

STAGE2_MODES = ("auto", "generate", "score")


def stage2_completions(pool_size: int, m: int) -> list[str]:
    """What Stage 2 in score mode scores: the selection field opening with user i, for i = 1..pool_size.

    "[i," when M > 1 (user i named first, more to follow: "[1," cannot be read as the start of "[10"),
    "[i]" when M = 1.
    """
    close = "," if m > 1 else "]"
    return [f"[[ ## selected_users ## ]]\n[{i}{close}" for i in range(1, pool_size + 1)]


def top_m_by_score(scores: Sequence[float], m: int) -> list[int]:
    """The M highest-scoring pool positions (ties: embedding order), in embedding order."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:m])


class UserSelector(dspy.Module):
    """Stage 2: the LM picks the M pool users most similar to the target user.

    mode="generate": the LM writes the list; if the answer does not parse, the selection falls back to
    embedding order and says so (`fallback=True`); if it names fewer than M users, embedding order fills
    the rest (`padded=True`).
    mode="score" (local engines that score): the same prompt, one prefill, and the M users whose number is
    most likely to open the list (`stage2_completions`) are kept: always a valid selection, the one the
    self-adaptive fine-tuning callback uses too. "auto": score when the LM's engine can, else generate.
    """

    def __init__(self, template: Template | str, m_select: int = 5, mode: str = "auto", prompt: str = "full"):
        super().__init__()
        if mode not in STAGE2_MODES:
            raise ConfigError(f"Stage-2 mode must be one of {STAGE2_MODES}, got {mode!r}")
        self.template = as_template(template, "UserSelector")
        self.m_select = m_select
        self.mode = mode
        self.prompt = check_prompt(prompt)
        self.select = dspy.Predict(SelectSimilarUsers)

    def adapter(self) -> dspy.ChatAdapter:
        """The adapter this module renders through (`chat_adapters.adapter_for`)."""
        return adapter_for(self.prompt)

    def inputs(self, history_titles: Sequence[str], pool_histories: Sequence[Sequence[str]], m: int) -> dict:
        return {"user_history": self.template.render_history(history_titles),
                "candidate_users": self.template.render_pool(pool_histories), "select_count": m}

    def forward(self, history_titles: Sequence[str], pool_histories: Sequence[Sequence[str]]) -> dspy.Prediction:
        check_titles(history_titles, "history_titles")
        m = min(self.m_select, len(pool_histories))
        inputs = self.inputs(history_titles, pool_histories, m)
        lm = lm_of(self.select)  # a predictor's own LM wins, as in generate mode (dspy.Predict)
        engine = getattr(lm, "engine", None)
        can_score = callable(getattr(engine, "score", None))
        if self.mode == "score" and not can_score:
            raise ConfigError("Stage-2 score mode needs a local model whose engine scores (hf:PATH or "
                              "gemma-3-270m); use stage2='generate' for API models")
        if self.mode == "score" or (self.mode == "auto" and can_score):
            adapter = self.adapter()
            messages = adapter.format(signature=self.select.signature, demos=self.select.demos, inputs=inputs)
            scores = score_completions(lm, messages, stage2_completions(len(pool_histories), m))
            return dspy.Prediction(indices=top_m_by_score(scores, m), fallback=False, padded=False, reason="",
                                   method="score")
        raw, values = None, None
        try:
            with dspy.context(adapter=self.adapter()):
                pred = self.select(**inputs)
            values = pred.selected_users
        except AdapterParseError as exc:
            raw = exc.lm_response
        picked, reason = parse_selection(values, len(pool_histories), m) if values is not None else (
            None, f"adapter could not parse the answer: {str(raw)[:200]!r}")
        if picked is None:
            return dspy.Prediction(indices=list(range(m)), fallback=True, padded=False, reason=reason,
                                   method="generate")
        padded = len(picked) < m
        picked += [i for i in range(len(pool_histories)) if i not in picked][: m - len(picked)]
        return dspy.Prediction(indices=picked, fallback=False, padded=padded, reason="", method="generate")
