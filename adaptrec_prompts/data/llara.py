"""LLaRA's processed splits (`train_data.df`, `Val_data.df`, `Test_data.df`), imported exactly.

The `.df` files are pandas pickles: a DataFrame with `seq` (the last 10 items, right-padded with
the padding id = number of items), `len_seq` and `next`. MovieLens rows hold `(item, rating)`
tuples with 0-based ids (`u.item` id - 1); LastFM rows hold plain ids of `id2name.txt`.

Unpickling runs code chosen by the file's author, so the files are read by `RestrictedUnpickler`,
which resolves only the exact (module, name) pairs a DataFrame pickle of plain columns needs
(`ALLOWED_GLOBALS`) and refuses anything else *before* it is imported, naming it in the error. A
module-level allowance ("anything under pandas") is not safe: `pandas.read_pickle` or `numpy.load`
would unpickle a second, unrestricted file.

LLaRA's files hold every window of each user but no user ids. `link_users` re-links them (docs/design.md,
"LLaRA imports"): row B continues row A when `(A.history + [A.next])[-10:] == B.history`; LLaRA writes a
user's windows consecutively, so where that rule allows several successors the adjacent row is taken, and
a link that is still ambiguous is left out (counted in the manifest). Each chain is one user: every row
gets a user id and its position in the user's sequence, so the Stage-1 exclusion rules apply as for raw
data. Rows with fewer than 3 history items are used for linking and then dropped, as LLaRA's loaders do.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

from adaptrec_prompts.data._io import iter_lines, malformed, parse_ints, require_folder, sha256_file
from adaptrec_prompts.data.interactions import clean_text, make_unique_titles
from adaptrec_prompts.data.movielens import load_item_titles
from adaptrec_prompts.errors import DataError, UnsafePickleError

LAYOUT = (
    "a LLaRA data/ref/<dataset> folder holding Val_data.df and/or Test_data.df (train_data.df optional) "
    "and id2name.txt (LastFM) or u.item (MovieLens; or pass --items-file)"
)
# Accepted file names per split: LLaRA's own capitalisation and the lower-case one some forks use.
SPLIT_FILES = {"train": ("train_data.df", "Train_data.df"), "valid": ("Val_data.df", "val_data.df"),
               "test": ("Test_data.df", "test_data.df")}
# The globals a DataFrame pickle of plain columns references (pandas 1.x-3.x, numpy 1.x-2.x), nothing else:
# constructors of arrays, dtypes, indexes and blocks. None of them reads files or calls back into pickle.
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
ALLOWED_GLOBALS = frozenset({
    ("builtins", "slice"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    *((m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "scalar", "_frombuffer")),
    ("pandas", "DataFrame"),  # pandas >= 3 pickles under the top-level names
    ("pandas", "Series"),
    ("pandas", "Index"),
    ("pandas", "RangeIndex"),
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.series", "Series"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.internals.blocks", "new_block"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
})
# Not allowed: pyarrow's array constructors, which pandas >= 3 uses for Arrow-backed string columns: they
# rebuild arrays from buffers without bounds checks, so a crafted file could read past its memory.


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only `ALLOWED_GLOBALS` (exact module and name), refusing before import."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's API
        if (module, name) in ALLOWED_GLOBALS:
            if module.startswith("numpy.core."):  # pickled by numpy 1.x
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refused to unpickle {module}.{name}: a LLaRA .df file may reference only the DataFrame, index, "
            "block and array constructors in adaptrec_prompts.data.llara.ALLOWED_GLOBALS. The file is not a "
            "plain DataFrame pickle; do not load it, or convert it to CSV/JSON where you trust it. (A file "
            "re-saved by pandas >= 3 stores its column names as Arrow strings: re-save it where you trust it "
            "after `frame.columns = pandas.Index(list(frame.columns), dtype=object)`.)"
        )


def read_restricted_pickle(path: Path):
    """Unpickle `path` through `RestrictedUnpickler` and return the object."""
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError, ValueError, KeyError,
                IndexError, OverflowError, UnicodeDecodeError, MemoryError, SystemError) as exc:
            raise DataError(f"{path}: not a readable pandas pickle ({exc})") from None


@dataclass(frozen=True)
class LlaraRow:
    """One LLaRA example: history (oldest first, padding removed) and target, in *dataset* ids."""

    index: int  # row index in the .df file
    history: list[int]
    target: int
    ratings: list[int] | None  # MovieLens only: ratings of history + target, for user matching
    user: str | None = None  # set by link_users: "<split>-u<k>", k = the chain's order in the file
    position: int | None = None  # the target's index in the user's re-linked sequence
    last: bool = False  # the user's last window (no row continues it)


def _load_titles(folder: Path, items_file: str | Path | None) -> tuple[dict[int, str], bool, Path]:
    """Return ({llara id: title}, whether ids are 0-based MovieLens ids, the file read)."""
    candidates = [Path(items_file)] if items_file else [folder / "id2name.txt", folder / "u.item"]
    for path in candidates:
        if path.is_file():
            break
    else:
        raise DataError(f"no item titles for {str(folder)!r}: expected id2name.txt or u.item there, "
                        "or pass --items-file PATH (MovieLens: the ml-100k u.item file)")
    if path.name == "id2name.txt":
        titles: dict[int, str] = {}
        expected = "'<id>::<name>'"
        for lineno, line in iter_lines(path, encoding="utf-8"):
            ident, sep, name = line.partition("::")
            if not sep:
                raise malformed(path, lineno, line, expected)
            (item,) = parse_ints(path, lineno, line, [ident], expected)
            titles[item] = clean_text(name)
        return titles, False, path
    return load_item_titles(path), True, path


def _rows(path: Path, pad: int, movielens: bool) -> list[LlaraRow]:
    """Every row of a .df file (short ones included: they link chains; `load_llara` drops them after)."""
    frame = read_restricted_pickle(path)
    columns = getattr(frame, "columns", None)
    if columns is None or not {"seq", "len_seq", "next"} <= set(columns):
        raise DataError(f"{path}: expected a DataFrame with columns seq, len_seq, next; got {type(frame).__name__}"
                        f" with columns {list(columns) if columns is not None else None}")
    try:
        return _convert(path, frame, pad, movielens)
    except (TypeError, ValueError, OverflowError, IndexError, KeyError, SystemError) as exc:  # damaged values
        raise DataError(f"{path}: a row does not hold LLaRA's (seq, len_seq, next) values ({type(exc).__name__}: "
                        f"{str(exc)[:120]}); the file is damaged: re-download it") from None


def _convert(path: Path, frame, pad: int, movielens: bool) -> list[LlaraRow]:
    rows: list[LlaraRow] = []
    for index, (seq, len_seq, nxt) in enumerate(zip(frame["seq"], frame["len_seq"], frame["next"], strict=True)):
        pairs = [tuple(int(v) for v in x) if movielens else (int(x), None) for x in seq]
        real = [pair for pair in pairs if pair[0] != pad]
        if pairs[: len(real)] != real:
            raise DataError(f"{path}: row {index}: padding id {pad} appears before real items in seq")
        if len_seq >= 3 and len(real) != len_seq:
            raise DataError(f"{path}: row {index}: len_seq={len_seq} but seq holds {len(real)} items")
        target = tuple(int(v) for v in nxt) if movielens else (int(nxt), None)
        shift = 1 if movielens else 0  # MovieLens ids become u.item ids
        rows.append(LlaraRow(
            index=index,
            history=[item + shift for item, _ in real],
            target=target[0] + shift,
            ratings=[r for _, r in real] + [target[1]] if movielens else None,
        ))
    return rows


MIN_HISTORY = 3  # LLaRA's loaders keep rows with len_seq >= 3
WINDOW = 10  # LLaRA's history length


def link_users(rows: list[LlaraRow], split: str, window: int = WINDOW) -> tuple[list[LlaraRow], dict]:
    """Re-link one file's windows into users (module docstring); returns the rows with user, position and
    last set, and counts for the manifest.

    Links, in order: (1) row i -> row i+1 when i+1 continues i (LLaRA writes a user's windows one after
    another); (2) for rows still without a successor, the one row that continues it, when that row has no
    predecessor yet and no other unlinked row it could continue. Anything else stays unlinked and is
    counted as an ambiguous chain end; a chain whose first window has a non-empty history may then be the
    tail of a user whose head is another chain (counted as `chains_not_starting_empty`).
    """
    by_history: dict[tuple[int, ...], list[int]] = {}
    for k, r in enumerate(rows):
        by_history.setdefault(tuple(r.history), []).append(k)
    successors = [by_history.get(tuple((r.history + [r.target])[-window:]), []) for r in rows]
    nxt: dict[int, int] = {}
    prev: dict[int, int] = {}
    for k, succ in enumerate(successors):
        if k + 1 in succ:
            nxt[k], prev[k + 1] = k + 1, k
    adjacent_ambiguous = sum(1 for k in nxt if len(successors[k]) > 1)
    free_succ = {k: [j for j in succ if j not in prev and j != k] for k, succ in enumerate(successors) if k not in nxt}
    claims: dict[int, int] = {}
    for k, succ in free_succ.items():
        for j in succ:
            claims[j] = claims.get(j, 0) + 1
    unique = 0
    ambiguous = 0
    for k, succ in free_succ.items():
        if len(succ) == 1 and claims[succ[0]] == 1:
            nxt[k], prev[succ[0]] = succ[0], k
            unique += 1
        elif succ:
            ambiguous += 1
    out: list[LlaraRow | None] = [None] * len(rows)
    heads = [k for k in range(len(rows)) if k not in prev]
    not_empty = 0
    for number, head in enumerate(heads):
        user, position, k = f"{split}-u{number}", len(rows[head].history), head
        not_empty += position > 0
        seen = set()
        while k is not None and k not in seen:
            seen.add(k)
            r = rows[k]
            out[k] = LlaraRow(r.index, r.history, r.target, r.ratings, user, position, k not in nxt)
            position += 1
            k = nxt.get(k)
    if any(r is None for r in out):  # only a cycle could leave rows unvisited; histories grow, so none is expected
        raise DataError(f"LLaRA {split}: {sum(r is None for r in out)} rows form a cycle of windows; cannot "
                        "assign users")
    stats = {"rows": len(rows), "users": len(heads), "links_adjacent": len(nxt) - unique,
             "links_adjacent_with_other_candidates": adjacent_ambiguous, "links_unique_non_adjacent": unique,
             "ambiguous_chain_ends": ambiguous, "chains_not_starting_empty": not_empty}
    return out, stats


def load_llara(raw_dir: str | Path, items_file: str | Path | None = None):
    """Import LLaRA's processed rows exactly, with users re-linked from the windows (`link_users`).

    Args:
        raw_dir: a LLaRA `data/ref/<dataset>` folder (`*_data.df` files, LLaRA's or lower-case names).
        items_file: titles file when the folder has none (`u.item` for MovieLens).

    Returns:
        (rows by split name for the splits present, only rows with >= 3 history items, each with its user
        id and position; {item id: unique title}; {file name: sha256}; notes with the linking counts).

    Example:
        >>> rows, titles, sources, notes = load_llara("../shared/data/llara-ref/lastfm")  # doctest: +SKIP
    """
    folder = require_folder(raw_dir, LAYOUT)
    raw_titles, movielens, titles_path = _load_titles(folder, items_file)
    pad = len(raw_titles)
    splits: dict[str, list[LlaraRow]] = {}
    sources = {titles_path.name: sha256_file(titles_path)}
    linking: dict[str, dict] = {}
    all_rows: dict[str, list[LlaraRow]] = {}
    for split, names in SPLIT_FILES.items():
        found = [folder / name for name in names if (folder / name).is_file()]
        if len(found) > 1 and sha256_file(found[0]) != sha256_file(found[1]):
            raise DataError(f"{folder} holds both {found[0].name} and {found[1].name} with different content; "
                            "keep the one you mean")
        if found:
            linked, linking[split] = link_users(_rows(found[0], pad, movielens), split)
            all_rows[split] = linked
            splits[split] = [r for r in linked if len(r.history) >= MIN_HISTORY]
            sources[found[0].name] = sha256_file(found[0])
    if "test" not in splits and "valid" not in splits:
        raise DataError(f"no Val_data.df or Test_data.df (or val_data.df / test_data.df) in {str(folder)!r}; "
                        f"expected {LAYOUT}")
    if "train" in all_rows:  # a held-out chain that continues a training row may be a training user's tail
        continued = {tuple((r.history + [r.target])[-WINDOW:]) for r in all_rows["train"]}
        for split in ("valid", "test"):
            heads: dict[str, LlaraRow] = {}
            for r in all_rows.get(split, []):
                if r.user not in heads or r.position < heads[r.user].position:
                    heads[r.user] = r
            if split in all_rows:
                linking[split]["heads_continuing_train"] = sum(
                    1 for r in heads.values() if r.history and tuple(r.history) in continued)
    titles = make_unique_titles(raw_titles)
    notes = {
        "format": "movielens (item, rating) tuples, ids shifted +1 to u.item ids" if movielens else "plain ids",
        "splits_present": sorted(splits),
        "rows_kept_len_seq_ge_3": {split: len(rows) for split, rows in splits.items()},
        "user_linking": linking,
    }
    return splits, titles, sources, notes
