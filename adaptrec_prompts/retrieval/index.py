"""Stage 1: the user index over Chroma (the only module that imports chromadb).

The pool is the training examples (history + next item). `UserIndex` stores one vector per training
example, with metadata (example id, user id, next item id, timestamp), in a cosine-space HNSW
collection whose parameters are set at creation. Embedded by default (`PersistentClient(path)`),
client/server when a URL is given (`HttpClient`; the server is `chroma run --path DIR --host 127.0.0.1
--port P`). Embeddings are always passed explicitly (Chroma would otherwise download an ONNX model).

Exclusions (docs/design.md, "Leakage rules") are applied in Python after over-fetching: never the
query's own example, never a window of the query's own user (which also removes every window whose next
item is the query's target), and nothing at or after the query's timestamp when both are known. A
neighbour is a *user*: each user appears once, with their most similar allowed window (`distinct_users`).
When the over-fetch leaves fewer than N, the query is re-issued with a larger k, and the event is counted
(`QueryStats.refetched`). Pool and query rows must carry user ids: `query` refuses rows without one,
since the same-user rule could not be applied to them. A history from outside the dataset (a new user,
served live) says so explicitly with the user id `NEW_USER`: nothing of that user is in the pool, so no
window is excluded as theirs. `NEW_USER` is an object, not a string, so it never equals a pool user and
never comes out of a dataset column (whose missing user ids are None and stay refused).

`open_index` is the collection of a prepared folder's training pool (the whole split or a seeded sample,
`pool_rows`), built when missing and checked when found; `UserIndex.open` is the same call with the
embedder and the client made from their names.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from adaptrec_prompts.errors import ConfigError, LeakageError

logger = logging.getLogger(__name__)

# Chosen by measurement (docs/retrieval.md, `adaptrec bench retrieval`): Chroma's default ef_search=100
# gave recall@50 of 0.49 on random 64-d vectors; these reach >= 0.99 recall@10 on the real embeddings.
DEFAULT_HNSW = {"space": "cosine", "ef_construction": 200, "ef_search": 400, "max_neighbors": 32}
NO_TIME = -1
# {vector segment id: {HNSW file name: sha256}} of an embedded Chroma folder, as the files were when this package
# last had them open. Checked by `make_client` before Chroma opens the folder: Chroma itself rewrites the files
# when it opens a folder (it applies its write-ahead log), so they are compared before that, never after.
CHECKSUM_FILE = "adaptrec-checksums.json"
_DAMAGED: dict[str, dict[str, tuple[Path, str]]] = {}  # folder -> segment id -> (file, what differs), at first open


class NewUser:
    """The type of `NEW_USER`: a query's user id meaning "not a user of this dataset" (module docstring)."""

    def __repr__(self) -> str:
        return "NEW_USER"

    def __reduce__(self) -> str:  # copies and pickles are the module's one instance
        return "NEW_USER"


NEW_USER = NewUser()


def check_user_id(user_id: str | NewUser | None, example_id: str | None = None) -> None:
    """The query user rule of live retrieval: a user id string, or `NEW_USER` for a history from outside the
    dataset (then no `example_id`: a dataset row must name its user, whose windows are excluded).

    Raises:
        LeakageError: otherwise (None, "", a non-string id, or NEW_USER with an example id).
    """
    if isinstance(user_id, NewUser):
        if example_id:  # a dataset row passed without its user: its own user's windows would come back
            raise LeakageError(f"example_id={example_id!r} names a dataset row, but user_id is NEW_USER: pass the "
                               "row's user_id so that its own user's windows are excluded")
        return
    if not isinstance(user_id, str):  # pool user ids are strings: 196 would never equal "196" and exclude nothing
        raise LeakageError(f"user_id={user_id!r} is a {type(user_id).__name__}; user ids are strings "
                           f"(user_id={str(user_id)!r}), as the index stores them")
    if user_id == "":
        raise LeakageError(f"user_id={user_id!r}: without a user id the query's own user cannot be excluded from "
                           "its neighbours. A dataset row without one needs the data re-prepared with this version "
                           "(`adaptrec data prepare`); a history from outside the dataset is user_id=NEW_USER "
                           "(the default)")


@dataclass(frozen=True)
class Neighbor:
    example_id: str
    user_id: str | None
    next_item_id: int
    timestamp: int | None
    score: float  # cosine similarity


@dataclass
class QueryStats:
    queries: int = 0
    refetched: int = 0  # queries where the first over-fetch left fewer than N after exclusions
    short: int = 0  # queries that still have fewer than N (the pool ran out)
    excluded: dict[str, int] = field(default_factory=lambda: {"same_example": 0, "same_user": 0,
                                                                "not_before_query_time": 0, "user_seen": 0})


def collection_name(dataset: str, embedder_id: str, data_hash: str) -> str:
    """A valid Chroma name that changes with the dataset, the embedder (and its parameters) and the data."""
    import hashlib

    digest = hashlib.sha256(f"{embedder_id}|{data_hash}".encode()).hexdigest()[:12]
    kind = embedder_id.split("-", 1)[0]
    return f"{dataset}-{kind}-{digest}".replace("_", "-")


def make_client(path: str | Path | None = None, url: str | None = None):
    """`chromadb.PersistentClient(path)` or, with a URL, `chromadb.HttpClient` (telemetry off)."""
    try:
        import chromadb
    except ImportError:
        raise ConfigError("Stage-1 retrieval needs chromadb: pip install -e '.[retrieval]'") from None
    settings = chromadb.Settings(anonymized_telemetry=False)
    if url:
        parsed = urlparse(url)
        if not parsed.hostname or not parsed.port:
            raise ConfigError(f"--chroma-url must look like http://127.0.0.1:8000, got {url!r}")
        try:
            return chromadb.HttpClient(host=parsed.hostname, port=parsed.port, ssl=parsed.scheme == "https",
                                       settings=settings)
        except Exception as exc:  # chromadb raises ValueError / connection errors when nothing answers
            raise ConfigError(f"no Chroma server answers at {url} ({str(exc)[:120]}); start one with `chroma run "
                              f"--path DIR --host {parsed.hostname} --port {parsed.port}`, or drop --chroma-url to use "
                              "an embedded index") from None
    if path is None:
        raise ConfigError("give a Chroma folder (--chroma-path) or a server URL (--chroma-url)")
    from chromadb.api.client import SharedSystemClient

    key = str(Path(path).resolve())
    if str(path) not in getattr(SharedSystemClient, "_identifier_to_system", {}):
        # Chroma has not opened the folder in this process yet (or was reset): the files are as left on disk
        _DAMAGED[key] = _check_checksums(Path(path))
    try:
        client = chromadb.PersistentClient(path=str(path), settings=settings)
        client.list_collections()  # opens the SQLite catalogue: a damaged file fails here, not mid-run
    except Exception as exc:
        text = f"{type(exc).__name__}: {str(exc)[:160]}"
        damaged = any(w in text.lower() for w in ("malformed", "not a database", "corrupt", "disk image",
                                                  "no such table", "file is not"))
        advice = ("the file is damaged: delete the folder and rebuild with `adaptrec index build`, or point "
                  "--chroma-path elsewhere" if damaged else
                  "check that it is readable and writable and not locked by another process, or point "
                  "--chroma-path elsewhere")
        raise ConfigError(f"the Chroma folder {str(path)!r} cannot be opened ({text}); {advice}") from None
    return client


class UserIndex:
    """A Chroma collection of training examples, with batched adds and exclusion-aware batched queries."""

    def __init__(self, client, name: str, hnsw: dict | None = None, metadata: dict | None = None,
                 lookup: dict[str, tuple[str | None, int, int | None]] | None = None):
        """Open or create the collection `name`.

        Args:
            lookup: optional example id -> (user id, next item id, timestamp) of the pool, held locally;
                when given, queries fetch only ids and distances (about 2x faster than with metadata).
        """
        self.client = client
        self.lookup = lookup
        # set by `UserIndex.open` / `open_index`: what a live retriever needs to embed and render
        self.embedder = None  # the Embedder whose vectors the collection holds
        self.data: Path | None = None  # the prepared folder the pool comes from
        self.pool: dict | None = None  # {"size", "train_rows", "seed"} of the indexed training examples
        self.name = name
        self.hnsw = {**DEFAULT_HNSW, **(hnsw or {})}
        self.collection = client.get_or_create_collection(name, configuration={"hnsw": self.hnsw},
                                                          metadata=metadata or None)

    @classmethod
    def open(cls, path: str | Path | None = None, *, data: str | Path, url: str | None = None,
             embedder="collab", embed_model: str | Path | None = None, hnsw: dict | None = None,
             pool_size: int | None = None, pool_seed: int = 0, progress: bool = True,
             device: str = "cpu") -> UserIndex:
        """The collection of a prepared folder's training pool, as `adaptrec index build/neighbors` open it.

        The same code path as the CLI (`embedders.make_embedder` + `make_client` + `open_index`):
        the collection name derives from the dataset, the embedder and the data hash, so this finds the one
        `adaptrec index build --data DATA --chroma-path PATH` made, and builds it (idempotently) if it is not
        there yet. The returned index carries its `embedder` and `data` folder, which a live retriever
        (`live.UserRetriever`, `AdaptRec.from_index`) needs.

        Args:
            path: embedded Chroma folder (`--chroma-path`); ignored when `url` is given.
            data: the prepared folder (`adaptrec data prepare`; a copy with neighbour columns works too,
                it has the same training split but another data hash, hence its own collection).
            url: a Chroma server, e.g. "http://127.0.0.1:8000" (`--chroma-url`).
            embedder: "collab", "lm", "text" (`--embedder`), or an already built `Embedder`.
            embed_model: model folder of the lm/text embedders (`--embed-model`).
            hnsw, pool_size, pool_seed: as `--ef-search/--ef-construction/--max-neighbors`, `--pool-size`,
                `--pool-seed` (a sampled pool is its own collection).
            progress: bars while the pool is embedded and indexed (`--no-progress`; see `progress.enabled`).
            device: where the lm/text embedders' model runs (`--device`; see `devices`).

        Example:
            >>> index = UserIndex.open("artifacts/chroma", data="artifacts/ml-100k")  # doctest: +SKIP
        """
        from adaptrec_prompts.retrieval.embedders import make_embedder

        emb = make_embedder(embedder, data, embed_model, device) if isinstance(embedder, str) else embedder
        client = make_client(path=None if url else path, url=url)
        return open_index(data, emb, client, hnsw=hnsw, pool_size=pool_size, pool_seed=pool_seed, progress=progress)

    def count(self) -> int:
        return self.collection.count()

    def __repr__(self) -> str:
        try:
            count = self.count()
        except Exception as exc:  # a repr never raises: a server gone away is shown, not thrown
            count = f"? ({type(exc).__name__})"
        parts = [f"name={self.name!r}", f"count={count}",
                 f"embedder={getattr(self.embedder, 'id', None)!r}",
                 f"data={None if self.data is None else str(self.data)!r}"]
        if self.pool and self.pool.get("seed") is not None:  # a sampled pool
            parts.append(f"pool={self.pool['size']} of {self.pool['train_rows']} training examples "
                         f"(seed {self.pool['seed']})")
        return f"UserIndex({', '.join(parts)})"

    def probe(self, vectors: np.ndarray) -> list[bool]:
        """For vectors stored in the index: is each found again at (near) zero distance? A damaged HNSW file
        keeps the SQLite count right but stops finding stored vectors, or crashes the reader: an embedded
        index is therefore probed in a child process, and a crashed child counts as nothing found."""
        settings = self.client.get_settings()
        if settings.is_persistent and settings.persist_directory:
            return _probe_in_child(settings.persist_directory, self.name, vectors)
        try:
            res = self.collection.query(query_embeddings=vectors, n_results=1, include=["distances"])
        except Exception as exc:  # not evidence of damage (a server blip, a lock): never a reason to rebuild
            raise ConfigError(f"could not query Chroma collection {self.name!r} to check it ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); retry, or check the server / folder") from None
        return [bool(d) and d[0] < 1e-4 for d in res["distances"]]

    def segment_dir(self) -> Path | None:
        """The folder of this collection's HNSW files in an embedded index (None for a server, or when Chroma's
        catalogue does not say): `<chroma path>/<vector segment id>/`."""
        import sqlite3

        settings = self.client.get_settings()
        if not (settings.is_persistent and settings.persist_directory):
            return None
        root = Path(settings.persist_directory)
        try:  # Chroma's own catalogue, read-only: which segment holds this collection's vectors
            with sqlite3.connect(f"file:{root / 'chroma.sqlite3'}?mode=ro", uri=True) as con:
                rows = con.execute("SELECT id FROM segments WHERE collection = ? AND scope = 'VECTOR'",
                                   (str(self.collection.id),)).fetchall()
        except sqlite3.Error as exc:
            logger.warning("cannot read Chroma's catalogue in %s to check the index files (%s)", root, exc)
            return None
        return root / rows[0][0] if len(rows) == 1 else None

    def file_checksums(self) -> dict[str, str] | None:
        """sha256 of each HNSW file of an embedded collection, as on disk now (None: no files to check)."""
        folder = self.segment_dir()
        return None if folder is None or not folder.is_dir() else _folder_checksums(folder) or None

    def has_checksums(self) -> bool:
        """Whether the folder's checksum file records this collection's HNSW files."""
        folder = self.segment_dir()
        return folder is not None and folder.name in _read_checksums(folder.parent)

    def record_checksums(self) -> bool:
        """Record the HNSW files as they are now in the folder's `CHECKSUM_FILE`; `make_client` checks them
        before Chroma next opens the folder (`damaged_file`)."""
        folder = self.segment_dir()
        sums = self.file_checksums()
        if folder is None or sums is None:
            return False
        recorded = _read_checksums(folder.parent)
        recorded[folder.name] = sums
        _write_checksums(folder.parent, recorded)
        return True

    def damaged_file(self) -> tuple[Path, str] | None:
        """(file, what differs) for the first HNSW file of this collection that differed from its recorded
        sha256 when this process opened the folder (`make_client`); None when all matched or nothing was
        recorded (an index from before the checksums, a server). A changed byte anywhere is found, which the
        20-vector probe of `open_index` can miss."""
        folder = self.segment_dir()
        if folder is None:
            return None
        return _DAMAGED.get(str(folder.parent.resolve()), {}).get(folder.name)

    def build(self, example_ids: Sequence[str], vectors: np.ndarray, user_ids: Sequence[str | None],
              next_item_ids: Sequence[int], timestamps: Sequence[int | None], progress: bool = False) -> int:
        """Add the pool (idempotent: ids are example ids and writes are upserts). Returns rows written.

        `progress`: a bar over the vectors written (Chroma builds the HNSW graph as they arrive)."""
        from adaptrec_prompts.utils.progress import bar

        if self.count() == len(example_ids):
            logger.info("collection %s already holds %d vectors; not rebuilt", self.name, len(example_ids))
            return 0
        batch = self.client.get_max_batch_size()
        metadatas = [{"example_id": e, "user_id": u or "", "next_item_id": int(n),
                      "timestamp": NO_TIME if t is None else int(t)}
                     for e, u, n, t in zip(example_ids, user_ids, next_item_ids, timestamps, strict=True)]
        with bar(desc=f"index {self.name}", total=len(example_ids), unit="vector", progress=progress) as shown:
            for start in range(0, len(example_ids), batch):
                stop = start + batch
                self.collection.upsert(ids=list(example_ids[start:stop]), embeddings=vectors[start:stop],
                                       metadatas=metadatas[start:stop])
                shown.update(len(example_ids[start:stop]))
        return len(example_ids)

    def query(self, vectors: np.ndarray, n: int, user_ids: Sequence[str | None],
              timestamps: Sequence[int | None], example_ids: Sequence[str] | None = None, overfetch: int = 3,
              batch_size: int = 256, stats: QueryStats | None = None,
              distinct_users: bool = True, progress: bool = False, desc: str = "query") -> list[list[Neighbor]]:
        """Top-n neighbours per query vector after the exclusion rules (module docstring).

        Args:
            user_ids: the queries' user ids; `NEW_USER` for a history from outside the dataset (no window
                is excluded as its user's). None or "" is refused.
            timestamps: the queries' times (nothing at or after one is returned); None when unknown.
            example_ids: the queries' own example ids (a query from the pool never gets itself back).
            distinct_users: keep each user's most similar allowed window only (N neighbours = N people).
            progress: a bar named `desc` over the queries answered (off by default: a live retriever
                asks one query at a time).

        Raises:
            LeakageError: a query has no user id (the same-user rule could not be applied).
        """
        from adaptrec_prompts.utils.progress import bar

        missing = [q for q, u in enumerate(user_ids) if not u]
        if missing:
            raise LeakageError(f"{len(missing)} of {len(user_ids)} queries have no user id (first: query "
                               f"{missing[0]}{'' if example_ids is None else ' = ' + str(example_ids[missing[0]])})"
                               "; neighbours could include the query's own user. Re-prepare the data with this "
                               "version (`adaptrec data prepare`), which assigns user ids to every import")
        stats = stats or QueryStats()
        pool = self.count()
        example_ids = list(example_ids) if example_ids is not None else [None] * len(vectors)
        results: list[list[Neighbor]] = []
        with bar(desc=desc, total=len(vectors), unit="query", progress=progress) as shown:
            for start in range(0, len(vectors), batch_size):
                chunk = slice(start, start + batch_size)
                queries = list(zip(user_ids[chunk], timestamps[chunk], example_ids[chunk], strict=True))
                k = min(pool, n * overfetch * (3 if distinct_users else 1) + 10)
                results.extend(self._query_chunk(vectors[chunk], n, queries, k, pool, stats, distinct_users))
                shown.update(len(queries))
        return results

    def _fetch(self, vectors: np.ndarray, k: int):
        if self.lookup is None:
            res = self.collection.query(query_embeddings=vectors, n_results=k, include=["distances", "metadatas"])
            return res["distances"], res["metadatas"]
        res = self.collection.query(query_embeddings=vectors, n_results=k, include=["distances"])
        metas = [[_meta(e, *self.lookup[e]) for e in ids] for ids in res["ids"]]
        return res["distances"], metas

    def _query_chunk(self, vectors, n, queries, k, pool, stats, distinct) -> list[list[Neighbor]]:
        distances, metadatas = self._fetch(vectors, k)
        out = []
        for q, (dist, meta) in enumerate(zip(distances, metadatas, strict=True)):
            stats.queries += 1
            kept = _filter(dist, meta, *queries[q], distinct, stats, n)
            kk = k
            if len(kept) < n and kk < pool:
                stats.refetched += 1
                while len(kept) < n and kk < pool:
                    kk = min(pool, kk * 4)
                    d2, m2 = self._fetch(vectors[q : q + 1], kk)
                    kept = _filter(d2[0], m2[0], *queries[q], distinct, QueryStats(), n)
            stats.short += len(kept) < n
            out.append(kept[:n])
        return out


def pool_rows(num_rows: int, pool_size: int | None, seed: int = 0) -> list[int]:
    """Train rows indexed in Stage 1: all of them, or a seeded uniform sample of `pool_size` (sorted).

    A smaller pool makes slow embedders (a real LM over 80k windows) affordable; compare embedders on the
    same pool (same size and seed), since a smaller pool alone changes what can be retrieved.
    """
    if pool_size is None or pool_size >= num_rows:
        return list(range(num_rows))
    if pool_size < 1:
        raise ConfigError(f"pool size must be >= 1, got {pool_size}")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(num_rows, size=pool_size, replace=False))


def take_rows(columns: Sequence[list], rows: list[int]) -> list[list]:
    """The given rows of several parallel columns."""
    return [[col[r] for r in rows] for col in columns]


def open_index(data_dir: str | Path, embedder, client, hnsw: dict | None = None,
               pool_size: int | None = None, pool_seed: int = 0, progress: bool = True) -> UserIndex:
    """The Chroma collection for (dataset, embedder, data, pool); built from the train pool if empty.

    The index returned carries `embedder` and `data` (this folder), so it can serve live queries.

    Args:
        pool_size: index a seeded sample of this many training examples instead of all of them.
        pool_seed: the sample's seed.
        progress: bars while a new collection's pool is embedded and written (`progress.enabled`).
    """
    from adaptrec_prompts.data.prepare import load_manifest, load_prepared
    from adaptrec_prompts.data.schema import column
    from adaptrec_prompts.retrieval.embedders import embed_all

    manifest = load_manifest(data_dir)
    train = load_prepared(data_dir)["train"]
    rows = pool_rows(train.num_rows, pool_size, pool_seed)
    sampled = len(rows) < train.num_rows
    suffix = f"-pool{len(rows)}s{pool_seed}" if sampled else ""
    name = collection_name(manifest["dataset"], embedder.id + suffix, manifest["data_hash"])
    ids, users, nexts, times = (column(train, c) for c in ("example_id", "user_id", "target_item_id", "timestamp"))
    if sampled:
        ids, users, nexts, times = take_rows((ids, users, nexts, times), rows)
    lookup = {e: (u, n, t) for e, u, n, t in zip(ids, users, nexts, times, strict=True)}
    index = UserIndex(client, name, hnsw=hnsw, lookup=lookup,
                      metadata={"embedder_id": embedder.id, "data_hash": manifest["data_hash"],
                                "dataset": manifest["dataset"],
                                **({"pool_size": len(rows), "pool_seed": pool_seed} if sampled else {})})
    index.pool = {"size": len(rows), "train_rows": train.num_rows, "seed": pool_seed if sampled else None}
    histories = None
    damage = None
    if index.count() == len(rows) and len(rows):  # an existing collection: check its files, else probe it
        damaged = index.damaged_file()  # the sha256s recorded when last written (docs/failure-behaviour.md)
        if damaged is not None:
            damage = f"{damaged[0]}: {damaged[1]}"
        elif not index.has_checksums():  # built before checksums, or a server: probe
            histories = column(train, "history_item_ids")
            probe = sorted(int(i) for i in np.random.default_rng(0).choice(len(rows), size=min(20, len(rows)),
                                                                            replace=False))
            pool_histories = take_rows((histories,), rows)[0] if sampled else histories
            found = index.probe(embedder.embed([pool_histories[i] for i in probe]))
            if sum(found) < len(probe):
                damage = f"found only {sum(found)} of {len(probe)} stored vectors"
        if damage:
            logger.warning("collection %s is damaged (%s); rebuilding it", name, damage)
            metadata = index.collection.metadata
            client.delete_collection(name)
            index = UserIndex(client, name, hnsw=hnsw, lookup=lookup, metadata=metadata)
            index.pool = {"size": len(rows), "train_rows": train.num_rows, "seed": pool_seed if sampled else None}
            index.rebuilt_after_damage = True
    if index.count() != len(rows):
        started = time.perf_counter()
        histories = histories or column(train, "history_item_ids")
        vectors = embed_all(embedder, take_rows((histories,), rows)[0] if sampled else histories,
                            desc="embed train pool", progress=progress)
        index.build(ids, vectors, users, nexts, times, progress=progress)
        logger.info("built %s: %d vectors in %.1fs", name, len(rows), time.perf_counter() - started)
    # the files as this process leaves them (Chroma rewrote them when it opened the folder, or built them):
    # the next process checks them before Chroma opens the folder (`CHECKSUM_FILE`)
    index.record_checksums()
    index.embedder, index.data = embedder, Path(data_dir)  # what a live retriever needs (live.UserRetriever)
    return index


def _folder_checksums(folder: Path) -> dict[str, str]:
    import hashlib

    out = {}
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        with open(path, "rb") as handle:
            out[path.name] = hashlib.file_digest(handle, "sha256").hexdigest()
    return out


def _read_checksums(root: Path) -> dict:
    import json

    file = root / CHECKSUM_FILE
    try:
        recorded = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("%s is unreadable (%s); the index files will be probed instead", file, exc)
        return {}
    return recorded if isinstance(recorded, dict) else {}


def _write_checksums(root: Path, recorded: dict) -> None:
    import json
    import os

    partial = root / f".{CHECKSUM_FILE}.{os.getpid()}"
    partial.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    partial.replace(root / CHECKSUM_FILE)


def _check_checksums(root: Path) -> dict[str, tuple[Path, str]]:
    """The recorded segments whose files differ now (segment id -> (first such file, what differs))."""
    damaged = {}
    for segment, sums in _read_checksums(root).items():
        folder = root / segment
        if not folder.is_dir():
            continue  # a deleted collection
        now = _folder_checksums(folder)
        for name, digest in sums.items():
            if name not in now:
                damaged[segment] = (folder / name, "missing")
                break
            if now[name] != digest:
                damaged[segment] = (folder / name, "its sha256 differs from the one recorded when the index was "
                                    "last written")
                break
    return damaged


_PROBE = """
import json, sys
import numpy as np
import chromadb
client = chromadb.PersistentClient(path=sys.argv[1], settings=chromadb.Settings(anonymized_telemetry=False))
res = client.get_collection(sys.argv[2]).query(query_embeddings=np.load(sys.argv[3]), n_results=1,
                                                include=["distances"])
print(json.dumps([bool(d) and d[0] < 1e-4 for d in res["distances"]]))
"""


def _probe_in_child(path: str, name: str, vectors: np.ndarray) -> list[bool]:
    import json
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        np.save(f"{tmp}/probe.npy", np.asarray(vectors, dtype=np.float32))
        proc = subprocess.run([sys.executable, "-c", _PROBE, path, name, f"{tmp}/probe.npy"], capture_output=True,
                              text=True, timeout=300)
    if proc.returncode < 0:  # killed by a signal (a segfault reading a damaged segment): nothing was found
        return [False] * len(vectors)
    if proc.returncode != 0:
        raise ConfigError(f"could not query Chroma collection {name!r} in {path} to check it "
                          f"({proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else 'no message'}); "
                          "retry, or delete the folder and rebuild with `adaptrec index build`")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _meta(example_id: str, user: str | None, next_item: int, ts: int | None) -> dict:
    return {"example_id": example_id, "user_id": user or "", "next_item_id": next_item,
            "timestamp": NO_TIME if ts is None else ts}


def _filter(distances, metadatas, user, time, example_id, distinct: bool, stats: QueryStats,
            n: int) -> list[Neighbor]:
    """The allowed neighbours, best first (at most n; the counts cover what was looked at to find them)."""
    kept, seen = [], set()
    for dist, meta in zip(distances, metadatas, strict=True):
        if len(kept) == n:
            break
        if example_id is not None and meta["example_id"] == example_id:
            stats.excluded["same_example"] += 1
            continue
        if not meta["user_id"]:
            raise LeakageError(f"pool row {meta['example_id']!r} has no user id; re-prepare the data with this "
                               "version and rebuild the index (`adaptrec index neighbors`)")
        if meta["user_id"] == user:
            stats.excluded["same_user"] += 1
            continue
        ts = meta["timestamp"]
        if time is not None and ts != NO_TIME and ts >= time:
            stats.excluded["not_before_query_time"] += 1
            continue
        if distinct and meta["user_id"] in seen:
            stats.excluded["user_seen"] += 1
            continue
        seen.add(meta["user_id"])
        kept.append(Neighbor(meta["example_id"], meta["user_id"] or None, int(meta["next_item_id"]),
                             None if ts == NO_TIME else int(ts), 1.0 - float(dist)))
    return kept


def exact_top_k(pool: np.ndarray, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine top-k by brute force (rows L2-normalized): (indices, similarities), best first."""
    idx_out, sim_out = [], []
    for start in range(0, len(queries), batch_size):
        sims = queries[start : start + batch_size] @ pool.T
        top = np.argpartition(-sims, min(k, sims.shape[1] - 1), axis=1)[:, :k]
        part = np.take_along_axis(sims, top, axis=1)
        order = np.argsort(-part, axis=1, kind="stable")
        idx_out.append(np.take_along_axis(top, order, axis=1))
        sim_out.append(np.take_along_axis(part, order, axis=1))
    return np.concatenate(idx_out), np.concatenate(sim_out)
