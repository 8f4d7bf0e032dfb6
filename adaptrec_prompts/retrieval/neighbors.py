"""Persisted Stage-1 neighbours: fit the embedder on train, index the train pool in Chroma, query every
split, and write a copy of the prepared folder with neighbour columns (so Stage 2/3, fine-tuning and
evaluation all read the same neighbours).

Columns added to every split (empty lists for splits not queried):
`neighbor_example_ids`, `neighbor_scores` (cosine), `neighbor_user_ids`, `neighbor_history_item_ids`,
`neighbor_next_item_ids`, `neighbor_history_titles`, `neighbor_next_titles` (best first; N distinct
users), and the same columns with the prefix `random_` (no scores): N users drawn uniformly at random
from the whole pool under the same exclusion rules, one random allowed window each, seeded per example
(`random_users`). They are the paper's "random users" control: selection="random" shows the first M.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import datasets

from adaptrec_prompts.data.prepare import OutputLock, load_items, load_manifest, load_prepared, refuse_existing, save
from adaptrec_prompts.data.protocol import example_rng
from adaptrec_prompts.data.schema import SPLITS, column
from adaptrec_prompts.errors import ConfigError, LeakageError
from adaptrec_prompts.retrieval.embedders import Embedder, embed_all
from adaptrec_prompts.retrieval.index import QueryStats, UserIndex, pool_rows, take_rows

logger = logging.getLogger(__name__)
MAX_N = 50
NEIGHBOR_FEATURES = {
    "neighbor_example_ids": datasets.Sequence(datasets.Value("string")),
    "neighbor_scores": datasets.Sequence(datasets.Value("float32")),
    "neighbor_user_ids": datasets.Sequence(datasets.Value("string")),
    "neighbor_history_item_ids": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
    "neighbor_next_item_ids": datasets.Sequence(datasets.Value("int64")),
    "neighbor_history_titles": datasets.Sequence(datasets.Sequence(datasets.Value("string"))),
    "neighbor_next_titles": datasets.Sequence(datasets.Value("string")),
}
RANDOM_FEATURES = {name.replace("neighbor_", "random_"): feature for name, feature in NEIGHBOR_FEATURES.items()
                   if name != "neighbor_scores"}


class RandomUsers:
    """Draws the random-users control from a Stage-1 pool: for a query, users in a random order (a generator
    seeded by (seed, example id)), skipping the query's own user and users without a window strictly before
    the query's time (when both times are known); for each, one of their allowed windows at random.
    """

    def __init__(self, lookup: dict[str, tuple[str | None, int, int | None]], seed: int = 0):
        import bisect

        self._bisect = bisect.bisect_left
        self.seed = seed
        by_user: dict[str, list[tuple[int, str]]] = {}
        for example_id, (user, _next, ts) in lookup.items():
            if not user:
                raise LeakageError(f"pool row {example_id!r} has no user id; re-prepare the data with this version")
            by_user.setdefault(user, []).append((-1 if ts is None else ts, example_id))
        self.users = sorted(by_user)
        self.windows = [sorted(by_user[u]) for u in self.users]
        self.times = [[t for t, _ in w] for w in self.windows]

    def draw(self, example_id: str, user: str, time: int | None, n: int) -> list[str]:
        """Example ids of n random allowed windows of n distinct users (fewer if the pool runs out)."""
        rng = example_rng(self.seed, "random-users", example_id)
        picked = []
        for u in rng.permutation(len(self.users)).tolist():
            if self.users[u] == user:
                continue
            times = self.times[u]
            # windows with an unknown time (-1) sort first and are always allowed, as in the retriever
            allowed = len(times) if time is None else self._bisect(times, time)
            if allowed == 0:
                continue
            picked.append(self.windows[u][int(rng.integers(allowed))][1])
            if len(picked) == n:
                break
        return picked


def add_neighbors(data_dir: str | Path, out: str | Path, index: UserIndex, embedder: Embedder, n: int = 10,
                  splits: Sequence[str] = SPLITS, overfetch: int = 3, overwrite: bool = False,
                  train_sample: int | None = None, train_sample_seed: int = 0, random_seed: int = 0,
                  progress: bool = True) -> dict:
    """Query the index for every row of `splits` and write `out` with the neighbour columns.

    `train_sample`: query only a seeded sample of that many train rows (`pool_rows(rows, size, seed)`,
    recorded in the manifest; the others get empty lists): fine-tuning on a sample then needs only these.
    `random_seed`: seed of the random-users control (`RandomUsers`).
    `progress`: per queried split, a bar while its histories are embedded and one while they are queried
    (`progress.enabled`: a terminal, not CI).

    Returns:
        The `neighbors` section written into the output manifest (per-split query stats included).

    Raises:
        LeakageError: a queried split or the pool has rows without user ids.
        OutputExistsError: `out` exists and `overwrite` is false (checked before any query, and again when the
            folder is moved into place: a folder another process finished meanwhile is kept).
        RunInUseError: another process is writing `out` (`prepare.OutputLock`).
    """
    from adaptrec_prompts.utils.options import check_number

    check_number("n (--n)", n, low=1, high=MAX_N)
    check_number("overfetch (--overfetch)", overfetch, low=1)
    check_number("random_seed (--random-seed)", random_seed, low=0)
    check_number("train_sample_seed (--train-sample-seed)", train_sample_seed, low=0)
    if train_sample is not None:
        check_number("train_sample (--train-sample)", train_sample, low=1)
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise ConfigError(f"unknown splits {sorted(unknown)}; valid: {', '.join(SPLITS)}")
    out = Path(out)
    with OutputLock(out):  # a second `index neighbors` on the same --out is refused, never interleaved
        refuse_existing(out, overwrite)  # before any query: the work would be thrown away at the end
        return _add_neighbors(data_dir, out, index, embedder, n, splits, overfetch, overwrite, train_sample,
                              train_sample_seed, random_seed, progress)


def _add_neighbors(data_dir, out: Path, index: UserIndex, embedder: Embedder, n: int, splits: Sequence[str],
                   overfetch: int, overwrite: bool, train_sample: int | None, train_sample_seed: int,
                   random_seed: int, progress: bool) -> dict:
    ddict = load_prepared(data_dir)
    _refuse_unsure_users(load_manifest(data_dir), data_dir, splits)
    train = ddict["train"]
    cols = {c: column(train, c) for c in ("example_id", "user_id", "history_item_ids", "target_item_id",
                                          "history_titles", "target_title", "timestamp")}
    pool = {e: k for k, e in enumerate(cols["example_id"])}
    lookup = index.lookup or {e: (cols["user_id"][k], cols["target_item_id"][k], cols["timestamp"][k])
                              for e, k in pool.items()}
    randoms = RandomUsers(lookup, seed=random_seed)
    section = {"embedder_id": embedder.id, "collection": index.name, "hnsw": index.hnsw, "n": n,
               "overfetch": overfetch, "pool": getattr(index, "pool", None), "distinct_users": True,
               "rebuilt_after_damage": getattr(index, "rebuilt_after_damage", False),
               "random_users": {"seed": random_seed, "n": n, "pool_users": len(randoms.users)}, "splits": {}}
    out_splits = {}
    for split in SPLITS:
        ds = ddict[split]
        columns = {name: [[] for _ in range(ds.num_rows)] for name in (*NEIGHBOR_FEATURES, *RANDOM_FEATURES)}
        if split in splits and ds.num_rows:
            started, stats = time.perf_counter(), QueryStats()
            queried = pool_rows(ds.num_rows, train_sample if split == "train" else None, train_sample_seed)
            histories, users, times, ids = (column(ds, c) for c in ("history_item_ids", "user_id", "timestamp",
                                                                    "example_id"))
            if len(queried) < ds.num_rows:
                histories, users, times, ids = take_rows((histories, users, times, ids), queried)
            if not all(users):
                raise LeakageError(f"{data_dir} [{split}]: {sum(1 for u in users if not u)} rows have no user id, so "
                                   "the same-user rule cannot be applied; re-prepare the data with this version "
                                   "(`adaptrec data prepare`), which assigns user ids to every import")
            vectors = embed_all(embedder, histories, desc=f"embed {split}", progress=progress)
            found = index.query(vectors, n, users, times, example_ids=ids, overfetch=overfetch, stats=stats,
                                progress=progress, desc=f"neighbours {split}")
            short_random = 0
            for row, neighbors, example_id, user, ts in zip(queried, found, ids, users, times, strict=True):
                _fill(columns, "neighbor_", row, [pool[nb.example_id] for nb in neighbors], cols)
                columns["neighbor_scores"][row] = [nb.score for nb in neighbors]
                picked = randoms.draw(example_id, user, ts, n)
                short_random += len(picked) < n
                _fill(columns, "random_", row, [pool[e] for e in picked], cols)
            section["splits"][split] = {**asdict(stats), "random_short": short_random,
                                        "seconds": round(time.perf_counter() - started, 2)}
            if len(queried) < ds.num_rows:
                section["splits"][split]["sample"] = {"rows": len(queried), "seed": train_sample_seed}
        for name, feature in {**NEIGHBOR_FEATURES, **RANDOM_FEATURES}.items():
            ds = ds.add_column(name, columns[name], feature=feature)
        out_splits[split] = ds
    manifest = load_manifest(data_dir)
    manifest = {**{k: v for k, v in manifest.items() if k != "data_hash"}, "source_data_hash": manifest["data_hash"],
                "neighbors": section}
    save(datasets.DatasetDict(out_splits), load_items(data_dir), manifest, out, overwrite=overwrite)
    return section


def build_neighbors(data: str | Path, out: str | Path, index: UserIndex, *, n: int = 10,
                    splits: Sequence[str] = SPLITS, overfetch: int = 3, overwrite: bool = False,
                    train_sample: int | None = None, train_sample_seed: int = 0, random_seed: int = 0,
                    progress: bool = True) -> Path:
    """`adaptrec index neighbors` as a call: a copy of the prepared folder `data` at `out` with the top-`n`
    Stage-1 neighbours (and the random-users control) of every row of `splits`, from `index`.

    What AdaptRec programs evaluated on persisted rows need (`run_eval(RunConfig(data=out, program="static"))`);
    a program served live (`AdaptRec.from_index`) retrieves per call instead and needs no such folder.

    Args:
        data: a prepared folder (`prepare_dataset`).
        out: the folder to write (refused if it exists, unless `overwrite`; checked before any query).
        index: the folder's user index, `UserIndex.open(chroma_path, data=data)` (it carries its embedder).
        n: neighbours per row (1..50; the paper's N is 10).
        splits: the splits to query (the others get empty neighbour lists).
        overfetch, train_sample, train_sample_seed, random_seed, progress: as `add_neighbors`.

    Returns:
        `out`, which `load_prepared(out)` opens; its manifest's `neighbors` section has the query statistics.

    Raises:
        OutputExistsError: `out` exists and `overwrite` is false.
        ConfigError: `index` was not opened with `UserIndex.open(..., data=...)`, or on another training split.
        LeakageError: as `add_neighbors`.

    Example:
        >>> index = UserIndex.open("artifacts/chroma", data="artifacts/ml-100k")  # doctest: +SKIP
        >>> build_neighbors("artifacts/ml-100k", "artifacts/ml-100k-nb", index, splits=["test"])  # doctest: +SKIP
    """
    from adaptrec_prompts.data.prepare import refuse_existing

    refuse_existing(out, overwrite)
    if not isinstance(index, UserIndex):
        raise TypeError(f"index={index!r} is a {type(index).__name__}; pass the folder's index, "
                        "UserIndex.open(chroma_path, data=data)")
    if index.embedder is None or index.data is None:
        raise ConfigError(f"the index {index.name!r} knows no embedder or prepared folder; open it with "
                          "UserIndex.open(chroma_path, data=data)")

    def pool_identity(folder) -> str:  # a neighbour copy keeps the training split of its source
        manifest = load_manifest(folder)
        return manifest.get("source_data_hash") or manifest["data_hash"]

    if pool_identity(index.data) != pool_identity(data):
        raise ConfigError(f"the index {index.name!r} holds the training split of {str(index.data)!r}, not of "
                          f"{str(data)!r}; open the index with UserIndex.open(chroma_path, data={str(data)!r})")
    add_neighbors(data, out, index, index.embedder, n=n, splits=splits, overfetch=overfetch, overwrite=overwrite,
                  train_sample=train_sample, train_sample_seed=train_sample_seed, random_seed=random_seed,
                  progress=progress)
    return Path(out)


def _refuse_unsure_users(manifest: dict, data_dir, splits: Sequence[str]) -> None:
    """Refuse to query a split whose re-linked users (LLaRA imports) may be incomplete: an ambiguous link left
    out may split one person into two "users" (train), and a held-out chain that continues a training row may
    be a training user's tail; either way the same-user rule could not be trusted."""
    linking = manifest.get("loader_notes", {}).get("user_linking") or {}
    for split in splits:
        info = linking.get("test" if split == "test_extended" else split) or {}
        unsure = {k: info.get(k, 0) for k in ("ambiguous_chain_ends", "heads_continuing_train")}
        if split == "train" and info.get("ambiguous_chain_ends"):
            raise LeakageError(f"{data_dir} [train]: {info['ambiguous_chain_ends']} window links were ambiguous when "
                               "re-linking users (loader_notes.user_linking in manifest.json), so a training user may "
                               "be split in two and see their own windows; query only held-out splits "
                               "(--splits valid,test,test_extended) or use a source with user ids")
        if split != "train" and unsure["heads_continuing_train"]:
            raise LeakageError(f"{data_dir} [{split}]: {unsure['heads_continuing_train']} held-out users' first "
                               "window continues a training row (loader_notes.user_linking), so they may be training "
                               "users whose windows are in the pool; use a source with user ids")


def _fill(columns: dict, prefix: str, row: int, rows: list[int], train: dict[str, list]) -> None:
    """Write the pool rows `rows` as one query's neighbour columns (prefix "neighbor_" or "random_")."""
    for name, source in (("example_ids", "example_id"), ("user_ids", "user_id"),
                         ("history_item_ids", "history_item_ids"), ("next_item_ids", "target_item_id"),
                         ("history_titles", "history_titles"), ("next_titles", "target_title")):
        columns[prefix + name][row] = [train[source][r] for r in rows]
