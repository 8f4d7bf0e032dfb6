"""LM output -> ParseResult. Exact matching on candidate number or normalized title, never substring.

A Stage-3 answer is valid when it names exactly one candidate:

- the whole answer equals one candidate's normalized title (checked first: titles may start with
  digits, e.g. "12 Monkeys (1995)"), or
- it starts with a candidate number in 1..K, optionally followed by ".", ")" or ":" and a title; when
  a title follows, it must equal that candidate's normalized title.

Normalization: Unicode NFKC, casefold, whitespace collapsed, surrounding quotes, brackets and a
trailing period stripped. "Alien" never matches "Aliens"; a title shared by two candidates is
ambiguous and therefore invalid.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

_NUMBERED = re.compile(r"^#?(?P<number>\d+)\s*(?:[.):\-]\s*(?P<title>.*))?$", re.DOTALL)
_LETTERED = re.compile(r"^(?P<letter>[a-z])\s*(?:[.):\-]\s*(?P<title>.*))?$", re.DOTALL)  # after normalize()
_STRIP = "\"'`*“”‘’ \t\n"


@dataclass(frozen=True)
class ParseResult:
    """Outcome of parsing one answer.

    Attributes:
        valid: the answer named exactly one candidate (or a full ranking in score mode).
        ranking: candidate item ids, best first (length 1 for a generated answer; K in score mode).
        reason: why the answer is invalid ("" when valid).
    """

    valid: bool
    ranking: list[int] = field(default_factory=list)
    reason: str = ""


def normalize(text: str) -> str:
    """Normalize an answer or title for exact comparison.

    Example:
        >>> normalize('  "The Usual  Suspects (1995)." ')
        'the usual suspects (1995)'
    """
    text = " ".join(unicodedata.normalize("NFKC", text).split()).strip(_STRIP)
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()
    return text.casefold()


def parse_choice(answer: str | None, candidate_ids: Sequence[int], candidate_titles: Sequence[str],
                 labels: str = "numbers") -> ParseResult:
    """Parse a generated Stage-3 answer against the candidate list, labelled with `labels` ("numbers",
    "letters" or "titles", see render.LABELS; with "titles" only the title names a candidate).

    Example:
        >>> parse_choice("2. Aliens", [10, 20], ["Alien", "Aliens"]).ranking
        [20]
        >>> parse_choice("B. Aliens", [10, 20], ["Alien", "Aliens"], labels="letters").ranking
        [20]
        >>> parse_choice("Alien", [10, 20], ["Aliens", "Predator"]).valid
        False
    """
    if answer is None or not answer.strip():
        return ParseResult(False, reason="empty answer")
    text = normalize(answer.splitlines()[0] if answer.strip() else answer)
    titles = [normalize(t) for t in candidate_titles]
    by_title = [i for i, t in enumerate(titles) if t == text]
    if len(by_title) == 1:
        return ParseResult(True, [candidate_ids[by_title[0]]])
    if len(by_title) > 1:
        return ParseResult(False, reason=f"title {text!r} matches {len(by_title)} candidates")
    if labels == "titles":  # the list shows no labels: only a title names a candidate
        return ParseResult(False, reason=f"{text[:80]!r} is not a candidate title")
    kind = "letter" if labels == "letters" else "number"
    match = (_LETTERED if labels == "letters" else _NUMBERED).match(text)
    if not match:
        return ParseResult(False, reason=f"{text[:80]!r} is neither a candidate {kind} nor a candidate title")
    number = ord(match["letter"]) - ord("a") + 1 if labels == "letters" else int(match["number"])
    label = match["letter"].upper() if labels == "letters" else str(number)
    if not 1 <= number <= len(candidate_ids):
        last = chr(ord("A") + len(candidate_ids) - 1) if labels == "letters" else str(len(candidate_ids))
        first = "A" if labels == "letters" else "1"
        return ParseResult(False, reason=f"candidate {kind} {label} is outside {first}..{last}")
    title = normalize(match["title"] or "")
    if title and title != titles[number - 1]:
        return ParseResult(False, reason=f"{kind} {label} is {candidate_titles[number - 1]!r} but the title says "
                                         f"{title[:80]!r}")
    return ParseResult(True, [candidate_ids[number - 1]])


def ranking_from_scores(scores: Sequence[float], candidate_ids: Sequence[int]) -> ParseResult:
    """Score mode: every candidate ranked by its score, best first (ties keep list order)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return ParseResult(True, [candidate_ids[i] for i in order])


def parse_selection(values: object, n_pool: int, m_select: int) -> tuple[list[int] | None, str]:
    """Stage 2: a list of 1-based user numbers -> up to M distinct 0-based indices, or (None, reason).

    Example:
        >>> parse_selection([3, 1, 3, 2], n_pool=5, m_select=2)
        ([2, 0], '')
    """
    if isinstance(values, str):
        values = re.findall(r"\d+", values)
    if not isinstance(values, (list, tuple)) or not values:
        return None, f"expected a list of user numbers, got {values!r}"[:200]
    picked: list[int] = []
    for value in values:
        try:
            number = int(value)
        except (TypeError, ValueError):
            return None, f"{value!r} is not a user number"
        if not 1 <= number <= n_pool:
            return None, f"user number {number} is outside 1..{n_pool}"
        if number - 1 not in picked:
            picked.append(number - 1)
    return picked[:m_select], ""
