"""MovieLens-100K raw files (`u.data`, `u.item`, as published by GroupLens) -> canonical interactions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from adaptrec_prompts.data._io import iter_lines, malformed, parse_ints, require_file, require_folder, sha256_file
from adaptrec_prompts.data.interactions import Interactions, make_unique_titles, normalize_movie_title
from adaptrec_prompts.errors import DataError

LAYOUT = "the unpacked ml-100k.zip: a folder holding u.data (user\\titem\\trating\\ttimestamp) and u.item"


def load_item_titles(path: Path) -> dict[int, str]:
    """Read `u.item` (latin-1, pipe-separated) into {u.item id: normalized title} (not yet unique)."""
    titles: dict[int, str] = {}
    expected = "'id|title|release date|...' (pipe-separated, latin-1)"
    for lineno, line in iter_lines(path, encoding="latin-1"):
        fields = line.split("|")
        if len(fields) < 2:
            raise malformed(path, lineno, line, expected)
        (item_id,) = parse_ints(path, lineno, line, fields[:1], expected)
        titles[item_id] = normalize_movie_title(fields[1])
    return titles


def load_movielens(raw_dir: str | Path) -> Interactions:
    """Load MovieLens-100K ratings as implicit interactions (every rating is one event).

    Args:
        raw_dir: folder with `u.data` and `u.item`.

    Returns:
        Interactions with user ids "1".."943", the `u.item` ids, and the rating timestamps.

    Raises:
        DataError: a file is missing or a line is malformed (the message has file:line).

    Example:
        >>> inter = load_movielens("../shared/data/ml-100k")  # doctest: +SKIP
        >>> inter.n_users, inter.n_items
        (943, 1682)
    """
    folder = require_folder(raw_dir, LAYOUT)
    data_path = require_file(folder, "u.data", LAYOUT)
    item_path = require_file(folder, "u.item", LAYOUT)
    users: list[str] = []
    items: list[int] = []
    times: list[int] = []
    expected = "four tab-separated integers: user_id item_id rating unix_timestamp"
    for lineno, line in iter_lines(data_path, encoding="latin-1"):
        fields = line.split("\t")
        if len(fields) != 4:
            raise malformed(data_path, lineno, line, expected)
        user, item, _rating, ts = parse_ints(data_path, lineno, line, fields, expected)
        users.append(str(user))
        items.append(item)
        times.append(ts)
    titles = load_item_titles(item_path)
    unknown = sorted(set(items) - set(titles))
    if unknown:
        raise DataError(f"{data_path}: item ids {unknown[:10]} are not in {item_path}")
    return Interactions(
        dataset="ml-100k",
        user_ids=users,
        item_ids=np.asarray(items, dtype=np.int64),
        timestamps=np.asarray(times, dtype=np.int64),
        titles=make_unique_titles(titles),
        sources={"u.data": sha256_file(data_path), "u.item": sha256_file(item_path)},
        notes={"event": "every rating (any value) is one interaction at its timestamp"},
    )
