"""LastFM HetRec-2011 2K raw files -> canonical interactions.

How a sequence is made (the dataset has play counts without time, and tag assignments with a date):

- One interaction per (user, artist): the *first* time the user tagged that artist. Play counts
  (`user_artists.dat`) carry no time, so they cannot order anything and are not used.
- The time of a tag assignment is `user_taggedartists-timestamps.dat` (Unix ms) when the folder has
  it, else local midnight Europe/Madrid of `user_taggedartists.dat`'s day/month/year (the convention
  of the timestamps file, per the dataset README). Day is 1 in ~98% of rows: the order is effectively
  by month, so ties are common; the protocol breaks them by artist id (deterministic).
- Assignments dated before 2002 (Last.fm's launch; 5 rows say 1956-1979) are dropped as bogus, and
  assignments of artists missing from `artists.dat` (no name to render) are dropped; both are counted
  in the manifest's loader notes.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from adaptrec_prompts.data._io import iter_lines, malformed, parse_ints, require_file, require_folder, sha256_file
from adaptrec_prompts.data.interactions import Interactions, clean_text, make_unique_titles

LAYOUT = (
    "the unpacked hetrec2011-lastfm-2k.zip: a folder holding artists.dat and user_taggedartists.dat "
    "(and optionally user_taggedartists-timestamps.dat)"
)
TIMESTAMPS_FILE = "user_taggedartists-timestamps.dat"
_MADRID = ZoneInfo("Europe/Madrid")
_FIRST_VALID = int(datetime(2002, 1, 1, tzinfo=_MADRID).timestamp())


def load_artist_names(path: Path) -> dict[int, str]:
    """Read `artists.dat` (UTF-8, tab-separated, header) into {artist id: cleaned name}."""
    names: dict[int, str] = {}
    expected = "id<TAB>name<TAB>url<TAB>pictureURL"
    for lineno, line in iter_lines(path, encoding="utf-8", skip_header=True):
        fields = line.split("\t")
        if len(fields) < 2:
            raise malformed(path, lineno, line, expected)
        (artist,) = parse_ints(path, lineno, line, fields[:1], expected)
        names[artist] = clean_text(fields[1])
    return names


def _read_tag_times(folder: Path) -> tuple[list[tuple[int, int, int]], dict[str, str]]:
    """Return (user, artist, seconds) per tag assignment and the sha256 of the files read."""
    stamped = folder / TIMESTAMPS_FILE
    out: list[tuple[int, int, int]] = []
    if stamped.is_file():
        expected = "userID<TAB>artistID<TAB>tagID<TAB>timestamp (Unix milliseconds)"
        for lineno, line in iter_lines(stamped, encoding="utf-8", skip_header=True):
            fields = line.split("\t")
            if len(fields) != 4:
                raise malformed(stamped, lineno, line, expected)
            user, artist, _tag, ms = parse_ints(stamped, lineno, line, fields, expected)
            out.append((user, artist, ms // 1000))
        return out, {TIMESTAMPS_FILE: sha256_file(stamped)}
    path = require_file(folder, "user_taggedartists.dat", LAYOUT)
    expected = "userID<TAB>artistID<TAB>tagID<TAB>day<TAB>month<TAB>year"
    midnight: dict[tuple[int, int, int], int] = {}
    for lineno, line in iter_lines(path, encoding="utf-8", skip_header=True):
        fields = line.split("\t")
        if len(fields) != 6:
            raise malformed(path, lineno, line, expected)
        user, artist, _tag, day, month, year = parse_ints(path, lineno, line, fields, expected)
        key = (year, month, day)
        if key not in midnight:
            try:
                midnight[key] = int(datetime(year, month, day, tzinfo=_MADRID).timestamp())
            except ValueError:
                raise malformed(path, lineno, line, "a valid day/month/year date") from None
        out.append((user, artist, midnight[key]))
    return out, {"user_taggedartists.dat": sha256_file(path)}


def load_lastfm(raw_dir: str | Path) -> Interactions:
    """Load HetRec-2011 LastFM as (user, artist, first tag time) interactions.

    Args:
        raw_dir: folder with `artists.dat` and `user_taggedartists.dat` (and optionally the
            `-timestamps.dat` variant, which is preferred when present).

    Raises:
        DataError: a file is missing or a line is malformed (the message has file:line).

    Example:
        >>> inter = load_lastfm("../shared/data/lastfm-2k")  # doctest: +SKIP
    """
    folder = require_folder(raw_dir, LAYOUT)
    artists_path = require_file(folder, "artists.dat", LAYOUT)
    names = load_artist_names(artists_path)
    assignments, sources = _read_tag_times(folder)
    first: dict[tuple[int, int], int] = {}
    dropped_date = dropped_unknown = 0
    for user, artist, seconds in assignments:
        if seconds < _FIRST_VALID:
            dropped_date += 1
            continue
        if artist not in names:
            dropped_unknown += 1
            continue
        key = (user, artist)
        if key not in first or seconds < first[key]:
            first[key] = seconds
    pairs = sorted(first.items())
    used = {artist for (_user, artist), _ in pairs}
    return Interactions(
        dataset="lastfm",
        user_ids=[str(user) for (user, _artist), _ in pairs],
        item_ids=np.asarray([artist for (_user, artist), _ in pairs], dtype=np.int64),
        timestamps=np.asarray([seconds for _, seconds in pairs], dtype=np.int64),
        titles=make_unique_titles({artist: names[artist] for artist in used}),
        sources={"artists.dat": sha256_file(artists_path), **sources},
        notes={
            "event": "first tag assignment of an artist by a user",
            "time_source": next(iter(sources)),
            "tag_assignments_read": len(assignments),
            "dropped_before_2002": dropped_date,
            "dropped_artist_not_in_artists_dat": dropped_unknown,
        },
    )
