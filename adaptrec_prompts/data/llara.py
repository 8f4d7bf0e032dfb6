"""LLaRA's processed splits (`train_data.df`, `Val_data.df`, `Test_data.df`), imported exactly.

The `.df` files are pandas pickles: a DataFrame with `seq` (the last 10 items, right-padded with
the padding id = number of items), `len_seq` and `next`. MovieLens rows hold `(item, rating)`
tuples with 0-based ids (`u.item` id - 1); LastFM rows hold plain ids of `id2name.txt`.

Unpickling runs code chosen by the file's author, so the files are read by `RestrictedUnpickler`,
which resolves only numpy and pandas names (plus `builtins.slice`, which pandas uses for block
placement) and refuses anything else *before* it is imported, naming it in the error.
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
SPLIT_FILES = {"train": "train_data.df", "valid": "Val_data.df", "test": "Test_data.df"}
_ALLOWED_ROOTS = ("numpy", "pandas")
_ALLOWED_BUILTINS = {("builtins", "slice")}


class RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only numpy/pandas globals (and `builtins.slice`)."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle's API
        root = module.split(".", 1)[0]
        if root in _ALLOWED_ROOTS or (module, name) in _ALLOWED_BUILTINS:
            if module == "numpy.core" or module.startswith("numpy.core."):  # pickled by numpy 1.x
                module = "numpy._core" + module[len("numpy.core"):]
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"refused to unpickle {module}.{name}: only numpy and pandas classes are allowed in a LLaRA .df "
            "file. The file is not a plain DataFrame pickle; do not load it, or convert it where you trust it."
        )


def read_restricted_pickle(path: Path):
    """Unpickle `path` through `RestrictedUnpickler` and return the object."""
    with open(path, "rb") as handle:
        try:
            return RestrictedUnpickler(handle).load()
        except UnsafePickleError as exc:
            raise UnsafePickleError(f"{path}: {exc}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
            raise DataError(f"{path}: not a readable pandas pickle ({exc})") from None


@dataclass(frozen=True)
class LlaraRow:
    """One LLaRA example: history (oldest first, padding removed) and target, in *dataset* ids."""

    index: int  # row index in the .df file
    history: list[int]
    target: int
    ratings: list[int] | None  # MovieLens only: ratings of history + target, for user matching


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
    frame = read_restricted_pickle(path)
    columns = getattr(frame, "columns", None)
    if columns is None or not {"seq", "len_seq", "next"} <= set(columns):
        raise DataError(f"{path}: expected a DataFrame with columns seq, len_seq, next; got {type(frame).__name__}"
                        f" with columns {list(columns) if columns is not None else None}")
    rows: list[LlaraRow] = []
    for index, (seq, len_seq, nxt) in enumerate(zip(frame["seq"], frame["len_seq"], frame["next"], strict=True)):
        pairs = [tuple(int(v) for v in x) if movielens else (int(x), None) for x in seq]
        real = [pair for pair in pairs if pair[0] != pad]
        if pairs[: len(real)] != real:
            raise DataError(f"{path}: row {index}: padding id {pad} appears before real items in seq")
        if len_seq >= 3 and len(real) != len_seq:
            raise DataError(f"{path}: row {index}: len_seq={len_seq} but seq holds {len(real)} items")
        if len(real) < 3:  # LLaRA's loaders keep len_seq >= 3 only
            continue
        target = tuple(int(v) for v in nxt) if movielens else (int(nxt), None)
        shift = 1 if movielens else 0  # MovieLens ids become u.item ids
        rows.append(LlaraRow(
            index=index,
            history=[item + shift for item, _ in real],
            target=target[0] + shift,
            ratings=[r for _, r in real] + [target[1]] if movielens else None,
        ))
    return rows


def load_llara(raw_dir: str | Path, items_file: str | Path | None = None):
    """Import LLaRA's processed rows exactly.

    Args:
        raw_dir: a LLaRA `data/ref/<dataset>` folder (`*_data.df` files).
        items_file: titles file when the folder has none (`u.item` for MovieLens).

    Returns:
        (rows by split name for the splits present, {item id: unique title}, {file name: sha256}, notes).

    Example:
        >>> rows, titles, sources, notes = load_llara("../shared/data/llara-ref/lastfm")  # doctest: +SKIP
    """
    folder = require_folder(raw_dir, LAYOUT)
    raw_titles, movielens, titles_path = _load_titles(folder, items_file)
    pad = len(raw_titles)
    splits: dict[str, list[LlaraRow]] = {}
    sources = {titles_path.name: sha256_file(titles_path)}
    for split, name in SPLIT_FILES.items():
        path = folder / name
        if path.is_file():
            splits[split] = _rows(path, pad, movielens)
            sources[name] = sha256_file(path)
    if "test" not in splits and "valid" not in splits:
        raise DataError(f"no Val_data.df or Test_data.df in {str(folder)!r}; expected {LAYOUT}")
    titles = make_unique_titles(raw_titles)
    notes = {
        "format": "movielens (item, rating) tuples, ids shifted +1 to u.item ids" if movielens else "plain ids",
        "splits_present": sorted(splits),
        "rows_kept_len_seq_ge_3": {split: len(rows) for split, rows in splits.items()},
    }
    return splits, titles, sources, notes
