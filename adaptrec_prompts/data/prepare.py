"""Frozen example splits on disk: build, save (with manifest), load and describe them.

A prepared folder is `datasets.load_from_disk`-able as a DatasetDict (train, valid, test,
test_extended) and also holds `items.jsonl` (item id -> title) and `manifest.json` (source sha256s,
protocol parameters, seed, counts, package version, data hash). The same inputs and seed give
byte-identical folders; nothing time- or machine-dependent is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path

import datasets

from adaptrec_prompts import __version__
from adaptrec_prompts.data import DATASET_NAMES, LOADERS, load_llara
from adaptrec_prompts.data.interactions import Interactions, drop_duplicate_events
from adaptrec_prompts.data.protocol import ProtocolConfig, build_examples, draw_candidates, example_row, example_rng
from adaptrec_prompts.data.render import DATASET_DOMAINS
from adaptrec_prompts.data.schema import EXAMPLE_FEATURES, SPLITS
from adaptrec_prompts.errors import DISK_FULL, ConfigError, DataError, DiskFullError, OutputExistsError

MANIFEST = "manifest.json"
ITEMS = "items.jsonl"
FILES = "files"  # the manifest's per-file sizes and sha256s (`verify_prepared`)
FORMAT_VERSION = 1


def _llara_examples(rows_by_split, titles: dict[int, str], config: ProtocolConfig) -> dict[str, list[dict]]:
    """LLaRA rows as example rows: exact history/target, re-linked user ids and positions, candidates drawn
    here with the recorded seed.

    As in LLaRA's reported evaluation, `valid` and `test` hold one row per held-out user, the user's last
    window (LastFM's files hold every window: 2,861 test rows for 122 users); `test_extended` holds every
    window (>= 3 history items) of the test users, once per candidate seed. `train` keeps every window.
    A row keeps the id and candidates it had as a window (`test/<row index in the file>`), so a test row
    equals its user's last `test_extended` twin with the first seed.
    """
    import numpy as np

    universe = np.asarray(sorted(titles), dtype=np.int64)
    k = config.k_candidates
    out: dict[str, list[dict]] = {split: [] for split in SPLITS}

    def row(split: str, source: str, r, seed: int) -> dict:
        candidates = draw_candidates(example_rng(seed, "llara", source, r.index), r.target, set(r.history),
                                     universe, k)
        suffix = f"/s{seed}" if split == "test_extended" else ""
        return example_row(f"{split}/{r.index}{suffix}", split, r.user, r.position, r.history, r.target,
                           candidates, seed, titles, None)

    for split, rows in rows_by_split.items():
        held_out = split in ("valid", "test")
        out[split] = [row(split, split, r, config.seed) for r in rows if r.last or not held_out]
    for offset in range(config.extended_seeds):
        out["test_extended"].extend(row("test_extended", "test", r, config.seed + offset)
                                    for r in rows_by_split.get("test", []))
    return out


def build(dataset: str, raw_dir: str | Path, config: ProtocolConfig, items_file: str | Path | None = None,
          domain: str | None = None) -> tuple[datasets.DatasetDict, dict[int, str], dict]:
    """Load raw files and build the frozen splits.

    Args:
        domain: template domain recorded in the manifest (default: from the dataset; LLaRA: movies when
            titles come from u.item, music when from id2name.txt).

    Returns:
        (DatasetDict with SPLITS, {item id: title}, manifest without the data hash).

    Raises:
        ConfigError: unknown dataset name (the message lists the valid ones).
        DataError: missing or malformed input files.
    """
    if dataset not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASET_NAMES)}")
    if dataset == "llara":
        rows, titles, sources, notes = load_llara(raw_dir, items_file)
        domain = domain or ("movies" if "u.item" in sources else "music")
        examples = _llara_examples(rows, titles, config)
    else:
        inter: Interactions = drop_duplicate_events(LOADERS[dataset](raw_dir))
        titles, sources, notes = inter.titles, inter.sources, inter.notes
        examples = build_examples(inter, config)
    if (not examples["train"] and dataset != "llara") or not (examples["test"] or examples["valid"]):
        raise DataError(f"{raw_dir}: the {dataset} files give {len(examples['train'])} training and "
                        f"{len(examples['test'])} test examples; the files are empty or too small (each user needs "
                        f"more than {config.min_history} interactions): check the raw folder")
    splits = {}
    for split in SPLITS:
        columns = {name: [r[name] for r in examples[split]] for name in EXAMPLE_FEATURES}
        splits[split] = datasets.Dataset.from_dict(columns, features=EXAMPLE_FEATURES, split=split)
    ddict = datasets.DatasetDict(splits)
    users = {split: len({u for u in ddict[split]["user_id"] if u is not None}) for split in SPLITS}
    manifest = {
        "format_version": FORMAT_VERSION,
        "package": "adaptrec-prompts",
        "package_version": __version__,
        "dataset": dataset,
        "domain": domain or DATASET_DOMAINS[dataset],
        "protocol": config.to_dict(),
        "seed": config.seed,
        "sources": dict(sorted(sources.items())),
        "loader_notes": notes,
        "counts": {
            "examples": {split: ddict[split].num_rows for split in SPLITS},
            "users": users,
            "items": len(titles),
        },
    }
    return ddict, titles, manifest


def prepare_dataset(dataset: str, out: str | Path, raw_dir: str | Path | None = None,
                    config: ProtocolConfig | None = None, *, items_file: str | Path | None = None,
                    domain: str | None = None, overwrite: bool = False,
                    cache_dir: str | Path = "artifacts/raw") -> Path:
    """`adaptrec data prepare` as a function: build the frozen splits and write the prepared folder `out`.

    Named `prepare_dataset`, not `prepare`, because `prepare` is this module's name (and was
    `adaptrec_prompts.prepare`): a package attribute of that name would be replaced by the module as soon as
    anything imports it.

    Args:
        raw_dir: the unpacked raw files (e.g. ../shared/data/ml-100k); None downloads them into `cache_dir`
            (ml-100k, lastfm; needs the network).
        config: the protocol (history length, K candidates, seed, ...); default `ProtocolConfig()`.

    Returns:
        `out`, which `load_prepared(out)` opens.

    Raises:
        OutputExistsError: `out` exists and `overwrite` is false (checked first, before anything is read or
            built).
        ConfigError, DataError: as `build`.
    """
    refuse_existing(out, overwrite)
    if raw_dir is None:
        from adaptrec_prompts.data.download import download

        raw_dir = download(dataset, cache_dir)
    with OutputLock(out):
        refuse_existing(out, overwrite)  # again under the lock: before the work, which would be thrown away
        ddict, titles, manifest = build(dataset, raw_dir, config or ProtocolConfig(), items_file=items_file,
                                        domain=domain)
        return save(ddict, titles, manifest, out, overwrite=overwrite)


def refuse_existing(out: str | Path, overwrite: bool) -> None:
    """Refuse an existing output folder up front (before minutes of building), unless `overwrite`.

    Raises:
        OutputExistsError: naming `overwrite=True` (and, for the command line, `--overwrite`).
    """
    if Path(out).exists() and not overwrite:
        raise OutputExistsError(f"output folder {str(out)!r} exists; pass overwrite=True to replace it or choose "
                                "another output folder",
                                cli=f"output folder {str(out)!r} exists; pass --overwrite to replace it or choose "
                                "another --out")


def _fingerprinted(ds: datasets.Dataset) -> datasets.Dataset:
    """Give a split a fingerprint derived from its content, so state.json is reproducible."""
    digest = hashlib.sha256()
    for batch in ds.data.to_batches():
        for column in batch.columns:
            for buffer in column.buffers():
                if buffer is not None:
                    digest.update(buffer)
    ds._fingerprint = digest.hexdigest()[:16]
    return ds


def data_hash(folder: Path) -> str:
    """sha256 over every split's arrow files, in split order: the identity of a prepared folder."""
    digest = hashlib.sha256()
    for split in SPLITS:
        for path in sorted((folder / split).glob("*.arrow")):
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _write_partial(ddict: datasets.DatasetDict, titles: dict[int, str], manifest: dict, partial: Path) -> None:
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict({s: _fingerprinted(ddict[s]) for s in SPLITS}).save_to_disk(
            str(partial), num_shards={s: 1 for s in SPLITS})  # one shard each; an empty split still gets a file
    finally:
        if bars:
            datasets.enable_progress_bars()
    with open(partial / ITEMS, "w", encoding="utf-8") as handle:
        for item_id in sorted(titles):
            handle.write(json.dumps({"item_id": item_id, "title": titles[item_id]}, ensure_ascii=False) + "\n")
    manifest = {**manifest, "data_hash": data_hash(partial), FILES: file_hashes(partial)}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save(ddict: datasets.DatasetDict, titles: dict[int, str], manifest: dict, out: str | Path,
         overwrite: bool = False) -> Path:
    """Write a prepared folder atomically (a partial folder is renamed into place when complete).

    Raises:
        OutputExistsError: `out` exists and `overwrite` is false.
    """
    out = Path(out)
    refuse_existing(out, overwrite)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _write_partial(ddict, titles, manifest, partial)
    except BaseException as exc:  # a full disk, Ctrl-C: no half-written folder is left to fill the disk
        shutil.rmtree(partial, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno in DISK_FULL:
            raise DiskFullError(f"no space left writing the prepared folder {str(out)!r} ({exc.strerror}): free disk "
                                "space or choose another --out, then run the same command again (nothing was "
                                "written)", exc.errno) from None
        raise
    if out.exists():
        if not overwrite:  # another writer finished first (the check above ran before the work): keep theirs
            shutil.rmtree(partial, ignore_errors=True)
            kept = f"output folder {str(out)!r} was written by another process while this one worked; it is kept. "
            raise OutputExistsError(kept + "Pass overwrite=True to replace it or choose another output folder",
                                    cli=kept + "Pass --overwrite to replace it or choose another --out")
        shutil.rmtree(out)
    partial.rename(out)
    return out


class OutputLock:
    """An exclusive lock on an output folder that is written whole at the end (`save`): `.NAME.lock` next to it,
    holding the owner's pid, so two processes never build the same --out at once (as `evaluate` locks a run
    folder; docs/failure-behaviour.md). The lock file stays; an unlocked one means nothing.

    Raises:
        RunInUseError: another process holds the lock.
    """

    BUSY = "{out} is being written by {owner} (lock {path}); wait for it to finish or choose another --out"

    def __init__(self, out: str | Path, path: str | Path | None = None, busy: str = BUSY):
        out = Path(out)
        self.path = Path(path) if path is not None else out.parent / f".{out.name}.lock"
        self.out, self.busy = out, busy

    def __enter__(self) -> OutputLock:
        import fcntl

        from adaptrec_prompts.errors import RunInUseError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "a+")
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.seek(0)
            owner = self.handle.read().strip() or "another process"
            self.handle.close()
            raise RunInUseError(self.busy.format(out=self.out, owner=owner, path=self.path)) from None
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(f"pid {os.getpid()}")
        self.handle.flush()
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


def load_manifest(folder: str | Path) -> dict:
    """Read a prepared folder's manifest, with an error that says how to create one."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DataError(f"{str(path)!r} not found: {str(folder)!r} is not a prepared folder; create one with "
                        "`adaptrec data prepare --dataset NAME --raw-dir PATH --out DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: damaged, not a JSON manifest ({str(exc)[:120]}); {REDO}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"{path}: damaged, not a JSON object; {REDO}")
    return manifest


REDO = ("re-create the folder (`adaptrec data prepare`, or `adaptrec index neighbors` for a neighbour folder) or "
        "restore it from a copy")


def file_hashes(folder: Path) -> dict[str, dict]:
    """{relative path: {"bytes", "sha256"}} of every file of a prepared folder but the manifest (which holds
    them): what `verify_prepared` checks when the folder is opened."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST):
        with open(path, "rb") as handle:
            out[path.relative_to(folder).as_posix()] = {"bytes": path.stat().st_size,
                                                        "sha256": hashlib.file_digest(handle, "sha256").hexdigest()}
    return out


_VERIFIED: dict[str, tuple] = {}  # folder -> the (name, size, mtime) of its files when they last verified


def verify_prepared(folder: str | Path, manifest: dict | None = None) -> None:
    """Check a prepared folder's files against the sizes and sha256s its manifest recorded when it was written
    (`adaptrec data verify`; `load_prepared` and `load_items` call it). A truncated or changed file is named,
    instead of a raw OSError, a UnicodeDecodeError or a crash inside Arrow later. Hashing ML-100K's prepared
    folder (~100 MB) takes ~0.3 s; a folder verifies once per process while its files keep their size and
    mtime. Folders written before the per-file hashes are checked against their `data_hash` (arrow files).

    Raises:
        DataError: naming the file, what differs and how to fix it.
    """
    folder = Path(folder)
    manifest = manifest if manifest is not None else load_manifest(folder)
    recorded = manifest.get(FILES)
    names = sorted(recorded) if isinstance(recorded, dict) else [
        p.relative_to(folder).as_posix() for s in SPLITS for p in sorted((folder / s).glob("*.arrow"))]
    try:
        key = tuple((n, (folder / n).stat().st_size, (folder / n).stat().st_mtime_ns) for n in names)
    except FileNotFoundError:
        key = None
    if key is not None and _VERIFIED.get(str(folder.resolve())) == key:
        return
    if not isinstance(recorded, dict):
        if manifest.get("data_hash") and data_hash(folder) != manifest["data_hash"]:
            raise DataError(f"{folder}: the split files (*.arrow) do not match the data_hash in {folder / MANIFEST} "
                            f"(a file is damaged or was changed); {REDO}")
    else:
        for name in names:
            path, want = folder / name, recorded[name]
            if not path.is_file():
                raise DataError(f"{path}: missing (recorded in {folder / MANIFEST}); {REDO}")
            size = path.stat().st_size
            if size != want.get("bytes"):
                raise DataError(f"{path}: {size} bytes, {want.get('bytes')} when written (truncated or changed); "
                                f"{REDO}")
            with open(path, "rb") as handle:
                if hashlib.file_digest(handle, "sha256").hexdigest() != want.get("sha256"):
                    raise DataError(f"{path}: its sha256 differs from the one recorded in {folder / MANIFEST} when "
                                    f"the folder was written (the file is damaged or was changed); {REDO}")
    if key is not None:
        _VERIFIED[str(folder.resolve())] = key


def load_items(folder: str | Path) -> dict[int, str]:
    """Read a prepared folder's item table (its files verified first: `verify_prepared`)."""
    verify_prepared(folder)
    with open(Path(folder) / ITEMS, encoding="utf-8") as handle:
        return {rec["item_id"]: rec["title"] for rec in map(json.loads, handle)}


def load_prepared(folder: str | Path) -> datasets.DatasetDict:
    """Open a prepared folder's splits (the manifest first, then its recorded file hashes: `verify_prepared`)."""
    verify_prepared(folder, load_manifest(folder))
    return datasets.load_from_disk(str(folder))


def stats(folder: str | Path) -> dict:
    """Users, items, examples per split and the history-length histogram of a prepared folder."""
    manifest = load_manifest(folder)
    ddict = load_prepared(folder)
    out = {"dataset": manifest["dataset"], "items": manifest["counts"]["items"], "splits": {}}
    for split in SPLITS:
        lengths = Counter(len(h) for h in ddict[split]["history_item_ids"])
        out["splits"][split] = {
            "examples": ddict[split].num_rows,
            "users": manifest["counts"]["users"][split],
            "history_length": dict(sorted(lengths.items())),
        }
    return out
