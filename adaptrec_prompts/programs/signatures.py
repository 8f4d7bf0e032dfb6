"""The prompts: DSPy signatures whose docstrings are the instructions (one source of truth).

Counts are never written here: the input fields carry text rendered from data by `render.Template`
("The user watched these 10 movies ..."), so the instruction stays true for any history length,
N, M or K. Domain nouns live in templates/*.toml; the instructions say "items".

Stage 2 answers with user numbers in order rather than 1-10 ratings: one short list is cheaper than
N ratings, it is exactly what the stage must produce (an ordered top-M), and it parses to a
well-defined valid/invalid outcome.
"""

from __future__ import annotations

import dspy


class SelectSimilarUsers(dspy.Signature):
    """You are given a target user's history and a numbered pool of other users with their histories.
    Judge which pool users have tastes most like the target user's, from the items they share and the
    kind of items they consume. Return the numbers of the most similar users, most similar first,
    as many as asked for."""

    user_history: str = dspy.InputField(desc="the target user's history, oldest first")
    candidate_users: str = dspy.InputField(desc="numbered pool users with their histories")
    select_count: int = dspy.InputField(desc="how many users to return")
    selected_users: list[int] = dspy.OutputField(desc="numbers of the most similar users, most similar first")


class RecommendNextItem(dspy.Signature):
    """Predict the item a user will choose next. Users with similar histories are listed first, each
    with the item they chose right after that history: use them as evidence of what people with this
    taste pick next. Then choose exactly one item from the numbered candidates for the target user, and
    answer with its number and title exactly as written in the candidate list."""

    similar_users: str = dspy.InputField(desc="similar users, each with their history and the item they chose next")
    user_history: str = dspy.InputField(desc="the target user's history, oldest first")
    candidates: str = dspy.InputField(desc="numbered candidate items; exactly one is the answer")
    answer: str = dspy.OutputField(desc="the chosen candidate as '<number>. <title>'")


class RecommendNextItemZeroShot(dspy.Signature):
    """Predict the item a user will choose next from their history. Choose exactly one item from the
    numbered candidates, and answer with its number and title exactly as written in the candidate list."""

    user_history: str = dspy.InputField(desc="the target user's history, oldest first")
    candidates: str = dspy.InputField(desc="numbered candidate items; exactly one is the answer")
    answer: str = dspy.OutputField(desc="the chosen candidate as '<number>. <title>'")


# (numbered wording, lettered wording) in the Stage-3 instructions and field descriptions
_LETTERED = (("numbered candidate", "lettered candidate"), ("its number and title", "its letter and title"),
             ("'<number>. <title>'", "'<letter>. <title>'"))


# (numbered wording, title-only wording): candidates listed by title alone, answered with the title
_TITLED = (("from the numbered candidates", "from the candidates"), ("numbered candidate items", "candidate items"),
           ("its number and title exactly", "its title exactly"), ("'<number>. <title>'", "its title"))


def lettered(signature: type[dspy.Signature]) -> type[dspy.Signature]:
    """A Stage-3 signature whose candidates are labelled with letters (labels="letters") instead of numbers:
    the same instructions and fields with "number" wording replaced by "letter"."""
    return _reworded(signature, _LETTERED)


def titled(signature: type[dspy.Signature]) -> type[dspy.Signature]:
    """A Stage-3 signature whose candidates are listed by title alone and answered with the title
    (labels="titles"): the same instructions and fields without the number wording."""
    return _reworded(signature, _TITLED)


def for_labels(signature: type[dspy.Signature], labels: str) -> type[dspy.Signature]:
    """`signature` worded for candidate `labels` ("numbers": unchanged)."""
    return {"letters": lettered, "titles": titled}.get(labels, lambda s: s)(signature)


def _reworded(signature: type[dspy.Signature], swaps) -> type[dspy.Signature]:
    def swap(text: str) -> str:
        for old, new in swaps:
            text = text.replace(old, new)
        return text

    out = signature.with_instructions(swap(signature.instructions))
    for name, field in signature.fields.items():
        desc = field.json_schema_extra.get("desc")
        if desc and swap(desc) != desc:
            out = out.with_updated_fields(name, desc=swap(desc))
    return out
