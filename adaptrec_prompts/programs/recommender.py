"""Stage 3: `NextItemRecommender`, the LM picks the next item among K labelled candidates.

Its modes (generate, and the three score modes), and what score mode scores (`answer_block`).
"""

from __future__ import annotations

from collections.abc import Sequence

import dspy
from dspy.utils.exceptions import AdapterParseError

from adaptrec_prompts.data.render import LABELS, Template, as_template, candidate_label, check_titles
from adaptrec_prompts.errors import ConfigError
from adaptrec_prompts.programs.chat_adapters import adapter_for, check_prompt
from adaptrec_prompts.programs.parsing import parse_choice, ranking_from_scores
from adaptrec_prompts.programs.scoring import lm_of, score_completions
from adaptrec_prompts.programs.signatures import RecommendNextItem, RecommendNextItemZeroShot, for_labels

MODES = ("generate", "score", "score-calibrated", "score-permuted")
SCORE_ORDERS = 3  # list orders averaged by mode "score-permuted"
# The content-free context of mode "score-calibrated": the zero-shot prompt with this instead of a history.
NULL_HISTORY = "The user's history is not shown."


def answer_block(assistant_content: str) -> str:
    """What score mode scores: the answer field (header, value and the newline that ends it), without the
    end-marker block that is the same boilerplate after every candidate."""
    return assistant_content.split("\n\n[[ ## completed ## ]]")[0] + "\n"


class NextItemRecommender(dspy.Module):
    """Stage 3: pick the next item among K labelled candidates, with or without similar users.

    labels="numbers" lists them as "1. <title>" .. "20. <title>"; labels="letters" as "A. <title>" ..
    "T. <title>" (one token each in every common tokenizer: what API score mode needs, see scoring.py);
    labels="titles" lists the titles alone and the answer is the title (LLaRA's format: the choice is made
    in title tokens, which the similar users' next items show; score mode then ranks the K titles by their
    likelihood, local engines only).

    mode="generate": the LM writes an answer, parsed exactly (parsing.parse_choice).
    mode="score": every candidate's answer (the answer field "<number>. <title>" and its newline) is
    scored by log-likelihood after the same prompt (one prefill, cache reused; the backend must support
    scoring), giving a full ranking.
    mode="score-calibrated": the score minus the same answer's score after a content-free prompt (the
    zero-shot prompt with `NULL_HISTORY` for the history and the same candidates): what the context adds
    to a candidate beyond its prior as a string and its number (Holtzman et al., 2021, "Surface Form
    Competition"; Zhao et al., 2021, "Calibrate Before Use"). One more prefill per example.
    mode="score-permuted": the candidate list is shown in `orders` cyclic shifts (by K / orders positions)
    and each candidate's score is averaged over them, so every list position is held by `orders` different
    candidates and no candidate is scored only at position 1 (Hou et al., 2023, "Large Language Models are
    Zero-Shot Rankers", bootstrapped orders). `orders` prefills per example.
    """

    def __init__(self, template: Template | str, mode: str = "generate", zero_shot: bool = False,
                 orders: int = SCORE_ORDERS, prompt: str = "full", labels: str = "numbers"):
        super().__init__()
        template = as_template(template, "NextItemRecommender")
        if labels not in LABELS:
            raise ConfigError(f"labels must be one of {LABELS}, got {labels!r}")
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
        if orders < 1:
            raise ConfigError(f"orders must be >= 1, got {orders}")
        self.template = template
        self.mode = mode
        self.orders = orders
        self.prompt = check_prompt(prompt)
        self.zero_shot = zero_shot
        self.labels = labels
        signature = RecommendNextItemZeroShot if zero_shot else RecommendNextItem
        self.recommend = dspy.Predict(for_labels(signature, labels))
        # the content-free prompt of score-calibrated mode, labelled like the real one
        self.null_signature = for_labels(RecommendNextItemZeroShot, labels)

    def adapter(self) -> dspy.ChatAdapter:
        """The adapter this module renders through (`chat_adapters.adapter_for`)."""
        return adapter_for(self.prompt)

    def inputs(self, history_titles: Sequence[str], candidate_titles: Sequence[str],
               similar_users: Sequence[tuple[Sequence[str], str]] = ()) -> dict[str, str]:
        """The signature's input values, rendered with the template."""
        values = {"user_history": self.template.render_history(history_titles),
                  "candidates": self.template.render_candidates(candidate_titles, self.labels)}
        if not self.zero_shot:
            values["similar_users"] = self.template.render_similar_users(similar_users)
        return values

    def answer_text(self, number: int, title: str) -> str:
        """The answer the `number`-th candidate (1-based) would be, as the signature asks for it."""
        return self.template.render_candidate(number, title, self.labels)

    def candidate_labels(self, k: int) -> list[str] | None:
        """The labels of K candidates, in list order ("1".."K" or "A"..; None for titles: no label)."""
        if self.labels == "titles":
            return None
        return [candidate_label(i, self.labels) for i in range(1, k + 1)]

    def completions(self, adapter, candidate_titles: Sequence[str]) -> list[str]:
        """What score mode scores for each candidate, in list order (see `answer_block`)."""
        signature = self.recommend.signature
        return [answer_block(adapter.format_assistant_message_content(signature, {"answer": self.answer_text(i, t)}))
                for i, t in enumerate(candidate_titles, start=1)]

    def permuted_scores(self, adapter, first: list[float], history_titles, candidate_titles, similar_users, lm=None
                        ) -> list[float]:
        """Mean score of each candidate over `orders` cyclic shifts of the list (`first`: the shift by 0)."""
        k = len(candidate_titles)
        totals = list(first)
        for p in range(1, self.orders):
            shift = (p * k) // self.orders
            order = [(i + shift) % k for i in range(k)]  # position j shows candidate order[j]
            titles = [candidate_titles[i] for i in order]
            messages = adapter.format(signature=self.recommend.signature, demos=self.recommend.demos,
                                      inputs=self.inputs(history_titles, titles, similar_users))
            for j, score in enumerate(score_completions(lm or lm_of(self.recommend), messages,
                                                        self.completions(adapter, titles),
                                                        labels=self.candidate_labels(k))):
                totals[order[j]] += score
        return [t / self.orders for t in totals]

    def forward(self, history_titles: Sequence[str], candidate_ids: Sequence[int], candidate_titles: Sequence[str],
                similar_users: Sequence[tuple[Sequence[str], str]] = ()) -> dspy.Prediction:
        check_titles(history_titles, "history_titles")
        check_titles(candidate_titles, "candidate_titles")
        inputs = self.inputs(history_titles, candidate_titles, similar_users)
        if self.mode in ("score", "score-calibrated", "score-permuted"):
            lm = lm_of(self.recommend)  # a predictor's own LM wins, as in generate mode (dspy.Predict)
            adapter = self.adapter()
            signature = self.recommend.signature
            messages = adapter.format(signature=signature, demos=self.recommend.demos, inputs=inputs)
            completions = self.completions(adapter, candidate_titles)
            labels = self.candidate_labels(len(candidate_titles))
            scores = score_completions(lm, messages, completions, labels=labels)
            if self.mode == "score-permuted":
                scores = self.permuted_scores(adapter, scores, history_titles, candidate_titles, similar_users, lm)
            if self.mode == "score-calibrated":
                null = adapter.format(signature=self.null_signature, demos=[], inputs={
                    "user_history": NULL_HISTORY, "candidates": inputs["candidates"]})
                scores = [s - b for s, b in zip(scores, score_completions(lm, null, completions, labels=labels),
                                                strict=True)]
            if all(s == float("-inf") for s in scores):
                return dspy.Prediction(answer=None, raw=None, scores=scores, valid=False, ranking=[],
                                       reason="no candidate label found in the answer's token logprobs")
            result = ranking_from_scores(scores, candidate_ids)
            return dspy.Prediction(answer=None, raw=None, scores=scores, valid=True, ranking=result.ranking, reason="")
        raw = answer = None
        try:
            with dspy.context(adapter=self.adapter()):
                answer = self.recommend(**inputs).answer
            raw = answer
        except AdapterParseError as exc:
            raw = exc.lm_response
        result = parse_choice(answer, candidate_ids, candidate_titles, self.labels)
        if answer is None:
            result = type(result)(False, [], f"adapter could not parse the answer: {str(raw)[:200]!r}")
        return dspy.Prediction(answer=answer, raw=raw, scores=None, valid=result.valid, ranking=result.ranking,
                               reason=result.reason)
