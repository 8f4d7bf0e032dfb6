"""GoodReads in the UCSD Book Graph format -> canonical interactions.

Files (Wan & McAuley, RecSys 2018; one JSON object per line, optionally gzipped):

- `goodreads_interactions*.json[.gz]`: `user_id`, `book_id`, `is_read`, `rating`, `date_added`,
  `read_at`, ... with dates like "Mon Aug 01 13:41:57 -0700 2016" ("" when unknown).
- `goodreads_books*.json[.gz]`: `book_id`, `title` (and `title_without_series`), ...

Decisions: only shelvings with `is_read == true` are interactions (a finished read is the event,
as a rating is in MovieLens); the time is `read_at`, or `date_added` when `read_at` is empty;
a read with neither date, or of a book missing from the books file, is dropped and counted.
Book ids (strings of digits in the files) become ints.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import numpy as np

from adaptrec_prompts.data._io import malformed, require_folder, sha256_file
from adaptrec_prompts.data.interactions import Interactions, clean_text, make_unique_titles
from adaptrec_prompts.errors import DataError

LAYOUT = (
    "a folder holding one goodreads_interactions*.json[.gz] and one goodreads_books*.json[.gz] "
    "file in the UCSD Book Graph format"
)
_DATE_FORMAT = "%a %b %d %H:%M:%S %z %Y"


def _find_one(folder: Path, prefix: str) -> Path:
    matches = sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and ".json" in p.name)
    if len(matches) != 1:
        found = [p.name for p in matches] or "none"
        raise DataError(f"expected exactly one {prefix}*.json[.gz] file in {str(folder)!r}, found {found}; "
                        f"expected {LAYOUT}")
    return matches[0]


def _json_lines(path: Path) -> Iterator[tuple[int, str, dict]]:
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise malformed(path, lineno, line, "one JSON object per line") from None
            if not isinstance(record, dict):
                raise malformed(path, lineno, line, "one JSON object per line")
            yield lineno, line, record


def _parse_date(path: Path, lineno: int, line: str, value: object) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(datetime.strptime(str(value), _DATE_FORMAT).timestamp())
    except ValueError:
        raise malformed(path, lineno, line, 'dates like "Mon Aug 01 13:41:57 -0700 2016"') from None


def _book_id(path: Path, lineno: int, line: str, record: dict) -> int:
    try:
        return int(record["book_id"])
    except (KeyError, TypeError, ValueError):
        raise malformed(path, lineno, line, 'a "book_id" field holding digits') from None


def load_goodreads(raw_dir: str | Path) -> Interactions:
    """Load GoodReads reads (UCSD Book Graph format) as interactions.

    Raises:
        DataError: a file is missing, ambiguous or has a malformed line (file:line in the message).

    Example:
        >>> inter = load_goodreads("tests/fixtures/goodreads")  # doctest: +SKIP
    """
    folder = require_folder(raw_dir, LAYOUT)
    inter_path = _find_one(folder, "goodreads_interactions")
    books_path = _find_one(folder, "goodreads_books")
    titles: dict[int, str] = {}
    for lineno, line, record in _json_lines(books_path):
        title = clean_text(str(record.get("title") or record.get("title_without_series") or ""))
        if not title:
            raise malformed(books_path, lineno, line, 'a non-empty "title"')
        titles[_book_id(books_path, lineno, line, record)] = title
    users: list[str] = []
    items: list[int] = []
    times: list[int] = []
    unread = undated = unknown = 0
    for lineno, line, record in _json_lines(inter_path):
        if "user_id" not in record or "is_read" not in record:
            raise malformed(inter_path, lineno, line, 'fields "user_id", "book_id", "is_read", "read_at"')
        book = _book_id(inter_path, lineno, line, record)
        if not record["is_read"]:
            unread += 1
            continue
        when = _parse_date(inter_path, lineno, line, record.get("read_at"))
        if when is None:
            when = _parse_date(inter_path, lineno, line, record.get("date_added"))
        if when is None:
            undated += 1
            continue
        if book not in titles:
            unknown += 1
            continue
        users.append(str(record["user_id"]))
        items.append(book)
        times.append(when)
    used = set(items)
    return Interactions(
        dataset="goodreads",
        user_ids=users,
        item_ids=np.asarray(items, dtype=np.int64),
        timestamps=np.asarray(times, dtype=np.int64),
        titles=make_unique_titles({book: titles[book] for book in used}),
        sources={inter_path.name: sha256_file(inter_path), books_path.name: sha256_file(books_path)},
        notes={
            "event": "a shelving with is_read=true, at read_at (else date_added)",
            "dropped_not_read": unread,
            "dropped_no_date": undated,
            "dropped_book_not_in_books_file": unknown,
        },
    )
