"""Canonical interactions: what every raw-file loader returns, and the one title normalizer.

Item ids are the truth; titles are rendering. Titles are normalized once, here, and made unique:
when two item ids share a title (MovieLens has 18 such pairs), every member of the group gets
" [item <id>]" appended, so a rendered prompt and a title-matching parser can still tell them apart.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np

from adaptrec_prompts.errors import DataError

# MovieLens writes "Usual Suspects, The (1995)". We move the trailing article to the front once,
# at load time ("The Usual Suspects (1995)"), as LLM4Rec prompts do; the year stays because it
# separates remakes. Only articles that are followed by the year/alt-title group or the end move.
_ARTICLES = ("The", "A", "An", "La", "Le", "Les", "Il", "Das", "Der", "Die", "El")
_TRAILING_ARTICLE = re.compile(r"^(?P<name>.+?), (?P<article>" + "|".join(_ARTICLES) + r")(?P<rest>(?: \(.*)?)$")


def clean_text(raw: str) -> str:
    """Unicode NFC, whitespace collapsed and stripped."""
    return " ".join(unicodedata.normalize("NFC", raw).split())


def normalize_movie_title(raw: str) -> str:
    """Normalize a MovieLens title: clean whitespace and move a trailing article to the front.

    Example:
        >>> normalize_movie_title("Usual Suspects, The (1995)")
        'The Usual Suspects (1995)'
        >>> normalize_movie_title("City of Lost Children, The (Cité des enfants perdus, La) (1995)")
        'The City of Lost Children (Cité des enfants perdus, La) (1995)'
    """
    title = clean_text(raw)
    match = _TRAILING_ARTICLE.match(title)
    if match:
        title = f"{match['article']} {match['name']}{match['rest']}"
    return title


def make_unique_titles(titles: dict[int, str]) -> dict[int, str]:
    """Append " [item <id>]" to every title shared (case-insensitively) by several item ids.

    Example:
        >>> make_unique_titles({1: "Alien", 2: "Aliens", 3: "alien"})
        {1: 'Alien [item 1]', 2: 'Aliens', 3: 'alien [item 3]'}
    """
    groups: dict[str, list[int]] = {}
    for item_id, title in titles.items():
        groups.setdefault(title.casefold(), []).append(item_id)
    unique = dict(titles)
    for ids in groups.values():
        if len(ids) > 1:
            for item_id in ids:
                unique[item_id] = f"{titles[item_id]} [item {item_id}]"
    return unique


@dataclass(frozen=True)
class Interactions:
    """One dataset's interactions in canonical form (parallel arrays, one row per user-item event).

    Attributes:
        dataset: name of the loader that produced it (`ml-100k`, `lastfm`, `goodreads`).
        user_ids: user id per row, as strings.
        item_ids: the dataset's own item id per row.
        timestamps: event time per row, integer seconds since the epoch (UTC).
        titles: item id -> normalized, unique title, for every item that may be rendered.
        sources: source file name -> sha256 of its bytes.
        notes: loader decisions and counts (dropped rows and why), copied into the manifest.
    """

    dataset: str
    user_ids: list[str]
    item_ids: np.ndarray
    timestamps: np.ndarray
    titles: dict[int, str]
    sources: dict[str, str]
    notes: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user_ids)
        if len(self.item_ids) != n or len(self.timestamps) != n:
            raise DataError(
                f"{self.dataset}: user_ids/item_ids/timestamps have different lengths "
                f"({n}/{len(self.item_ids)}/{len(self.timestamps)})"
            )
        missing = set(np.unique(self.item_ids).tolist()) - set(self.titles)
        if missing:
            raise DataError(f"{self.dataset}: items without a title: {sorted(missing)[:10]}")

    @property
    def n_users(self) -> int:
        return len(set(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(np.unique(self.item_ids).size)

    def __len__(self) -> int:
        return len(self.user_ids)


def drop_duplicate_events(inter: Interactions) -> Interactions:
    """The interactions without repeated (user, item, timestamp) rows (the first of each is kept), with the
    count in `notes["duplicate_events_dropped"]`. A repeated row would put an example's target inside its own
    history; the same item at another time is a real repeat and is kept."""
    import dataclasses

    seen: set[tuple[str, int, int]] = set()
    keep = []
    for row, key in enumerate(zip(inter.user_ids, inter.item_ids.tolist(), inter.timestamps.tolist(), strict=True)):
        if key not in seen:
            seen.add(key)
            keep.append(row)
    dropped = len(inter) - len(keep)
    index = np.asarray(keep, dtype=np.int64)
    return dataclasses.replace(inter, user_ids=[inter.user_ids[i] for i in keep], item_ids=inter.item_ids[index],
                               timestamps=inter.timestamps[index],
                               notes={**inter.notes, "duplicate_events_dropped": dropped})
