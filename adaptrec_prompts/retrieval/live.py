"""Live Stage 1: similar users retrieved per call from an opened `UserIndex` (`UserRetriever`).

`adaptrec index neighbors` persists neighbours for a dataset's rows; a deployed recommender gets
histories that are in no dataset. `UserRetriever` answers both the same way: it embeds the history with
the index's embedder and calls `UserIndex.query`, the call `neighbors.add_neighbors` makes, so the same
rules hold (docs/design.md, "Leakage rules"): never the query's own example, never a window of its user,
nothing at or after its timestamp when known, N distinct users with their most similar allowed window
each. A dataset row passes its user id, timestamp and example id and gets exactly the neighbours that
`index neighbors` persisted for it (tests/test_live_retrieval.py). A new history passes none of them:
its user id is `NEW_USER` (the default), since nothing of that user is in the pool. A user id of None
or "" (a dataset row without one) is refused with `LeakageError`, as `index neighbors` refuses it.

Copies and saving: the retriever holds a Chroma client, an embedder and the pool's titles. It is a
`dspy.Module` without parameters, so it adds nothing to a program's DSPy state, and deep copies (DSPy
optimizers copy programs) share it instead of copying a client. AdaptRec on top of it, `LiveAdaptRec`
(`AdaptRec.from_index`), is a program: `programs.adaptrec`.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

import dspy
import numpy as np

from adaptrec_prompts.data.prepare import ITEMS, load_items, load_prepared
from adaptrec_prompts.data.render import check_titles
from adaptrec_prompts.data.schema import column
from adaptrec_prompts.errors import ConfigError, UnknownItemError
from adaptrec_prompts.retrieval.index import NEW_USER, NewUser, UserIndex, check_user_id
from adaptrec_prompts.retrieval.neighbors import MAX_N, RandomUsers


class ItemTable:
    """A prepared folder's items (items.jsonl) both ways: id -> title and title -> id."""

    def __init__(self, titles: dict[int, str], source: str | Path):
        self.title_of = titles
        self.source = str(source)
        self.ids_of: dict[str, list[int]] = {}
        for item_id, title in titles.items():
            self.ids_of.setdefault(title, []).append(item_id)

    def ids(self, titles: Sequence[str], field: str) -> list[int]:
        """The item id of each title (exact match).

        Raises:
            UnknownItemError: a title is not in the table, or names several items.
        """
        out = []
        for pos, title in enumerate(titles):
            ids = self.ids_of.get(title)
            if not ids:
                close = difflib.get_close_matches(str(title), list(self.ids_of), n=3)
                raise UnknownItemError(f"{field}[{pos}] = {title!r} is not a title in {self.source} "
                                       f"({len(self.title_of)} items); titles must match exactly"
                                       + (f"; close: {', '.join(map(repr, close))}" if close else ""))
            if len(ids) > 1:
                raise UnknownItemError(f"{field}[{pos}] = {title!r} names {len(ids)} items in {self.source} "
                                       f"(ids {ids}); pass item ids instead of titles")
            out.append(ids[0])
        return out

    def titles(self, ids: Sequence[int], field: str) -> list[str]:
        """The title of each item id.

        Raises:
            UnknownItemError: an id is not in the table.
        """
        missing = [(pos, i) for pos, i in enumerate(ids) if i not in self.title_of]
        if missing:
            pos, item_id = missing[0]
            raise UnknownItemError(f"{field}[{pos}] = {item_id!r} is not an item id in {self.source} "
                                   f"({len(self.title_of)} items)")
        return [self.title_of[i] for i in ids]

    def resolve(self, ids: Sequence[int] | None, titles: Sequence[str] | None, what: str
                ) -> tuple[list[int], list[str]]:
        """(ids, titles) of `what` ("history" or "candidate") from whichever was given; both must agree."""
        if ids is None and titles is None:
            raise ConfigError(f"give {what}_titles or {what}_ids" + ("" if what == "candidate" else
                                                                     " (history_item_ids)"))
        field = "history_item_ids" if what == "history" else "candidate_ids"
        check_titles(titles, f"{what}_titles")
        if titles is None:
            return list(ids), self.titles(ids, field)
        if ids is None:
            return self.ids(titles, f"{what}_titles"), list(titles)
        ids, titles = list(ids), list(titles)
        if self.titles(ids, field) != titles:
            raise ConfigError(f"{field} and {what}_titles disagree (by {self.source}): {ids} vs {titles}; pass "
                              "one of them")
        return ids, titles


class UserRetriever(dspy.Module):
    """Stage 1, live: the N most similar allowed users of one history (module docstring for the rules).

    Args:
        index: an index opened with `UserIndex.open` (or `index.open_index`): it carries the embedder
            and the prepared folder whose training split is the pool.
        n: N, users returned (1..50).
        overfetch: as `adaptrec index neighbors --overfetch` (the same value gives the same neighbours).
        random_seed: seed of the random-users control, as `index neighbors --random-seed`.

    Example:
        >>> retrieve = UserRetriever(UserIndex.open("artifacts/chroma", data="artifacts/ml-100k"), n=10)  # doctest: +SKIP
        >>> retrieve(history_titles=["Star Wars (1977)", "Fargo (1996)"]).user_ids  # doctest: +SKIP
    """

    def __init__(self, index: UserIndex, n: int = 10, overfetch: int = 3, random_seed: int = 0):
        super().__init__()
        if index.embedder is None or index.data is None:
            raise ConfigError(f"the index {index.name!r} knows no embedder or prepared folder; open it with "
                              "UserIndex.open(path, data=FOLDER) (or retrieval.index.open_index)")
        if not 1 <= n <= MAX_N:
            raise ConfigError(f"n must be in 1..{MAX_N}, got {n}")
        self.index, self.n, self.overfetch, self.random_seed = index, n, overfetch, random_seed
        train = load_prepared(index.data)["train"]
        self._row = {e: k for k, e in enumerate(column(train, "example_id"))}
        self._histories = column(train, "history_titles")
        self._users = column(train, "user_id")
        self._next_titles = column(train, "target_title")
        self._random: RandomUsers | None = None  # built on first use (selection="random")
        self.items = ItemTable(load_items(index.data), Path(index.data) / ITEMS)

    def __deepcopy__(self, memo) -> UserRetriever:
        return self  # a handle on an external index: copies of a program share it

    def describe(self) -> dict:
        """What identifies the retrieval (recorded in run manifests next to the program's config)."""
        return {"collection": self.index.name, "embedder_id": self.index.embedder.id, "hnsw": self.index.hnsw,
                "pool": self.index.pool, "n": self.n, "overfetch": self.overfetch, "random_seed": self.random_seed}

    def forward(self, history_item_ids: Sequence[int] | None = None, history_titles: Sequence[str] | None = None,
                user_id: str | NewUser = NEW_USER, timestamp: int | None = None, example_id: str | None = None,
                n: int | None = None) -> dspy.Prediction:
        """Retrieve the similar users of one history (given by item ids or titles).

        Args:
            user_id: the query's user (their windows are never returned); `NEW_USER` for a history from
                outside the dataset.
            timestamp: the query's time (seconds): only windows strictly before it; None when unknown.
            example_id: the query's own example id, when it is a dataset row.

        Returns:
            A Prediction with `users` ([(history titles, next title)] best first: AdaptRec's `neighbors`
            input), `neighbors` (`index.Neighbor` records), `example_ids`, `user_ids` and `scores`.

        Raises:
            LeakageError: user_id is None or "".
            UnknownItemError: a title or id is not in the items table, or (new user) no history item occurs
                in the training split, so the embedder cannot place the history.
        """
        check_user_id(user_id, example_id)
        history_item_ids, _ = self.items.resolve(history_item_ids, history_titles, "history")
        vectors = self.index.embedder.embed([list(history_item_ids)])
        if user_id is NEW_USER and not np.any(vectors):
            raise UnknownItemError(f"none of the history's {len(history_item_ids)} items occurs in the training split "
                                   f"of {self.index.data}, so the {self.index.embedder.id.split('-')[0]} embedder "
                                   "cannot place it; add items other users have interacted with")
        (found,) = self.index.query(vectors, n or self.n, [user_id], [timestamp], example_ids=[example_id or None],
                                    overfetch=self.overfetch)
        rows = [self._row[nb.example_id] for nb in found]
        return dspy.Prediction(users=[(self._histories[r], self._next_titles[r]) for r in rows], neighbors=found,
                               example_ids=[nb.example_id for nb in found], user_ids=[nb.user_id for nb in found],
                               scores=[nb.score for nb in found])

    def random_users(self, user_id: str | NewUser, timestamp: int | None, example_id: str | None, n: int
                     ) -> list[tuple[list[str], str]]:
        """The random-users control for one query, as `index neighbors` draws it (`neighbors.RandomUsers`,
        seeded by (random_seed, example id); a new history, without an example id, uses "")."""
        picked = self.random_example_ids(user_id, timestamp, example_id, n)
        return [(self._histories[self._row[e]], self._next_titles[self._row[e]]) for e in picked]

    def pool_user(self, example_id: str) -> str:
        """The user id of a pool (training) example."""
        return self._users[self._row[example_id]]

    def random_example_ids(self, user_id: str | NewUser, timestamp: int | None, example_id: str | None, n: int
                           ) -> list[str]:
        """The example ids `random_users` draws (the same draw)."""
        check_user_id(user_id, example_id)
        if self._random is None:
            lookup = self.index.lookup
            if lookup is None:
                train = load_prepared(self.index.data)["train"]
                lookup = {e: (u, t, ts) for e, u, t, ts in zip(*(column(train, c) for c in (
                    "example_id", "user_id", "target_item_id", "timestamp")), strict=True)}
            self._random = RandomUsers(lookup, seed=self.random_seed)
        return self._random.draw(example_id or "", user_id, timestamp, n)
