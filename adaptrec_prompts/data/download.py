"""Fetch the official archives (GroupLens) into a cache folder, with checksums.

GroupLens publishes the MD5 of ml-100k.zip; we check it, and we check the sha256 of the extracted
files whose exact bytes are known (those in ../shared/data/*/SOURCE.md). Offline, the error says to
pass `--raw-dir` with an unpacked copy instead.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from adaptrec_prompts.data._io import sha256_file
from adaptrec_prompts.errors import ConfigError, DownloadError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Archive:
    url: str
    folder: str  # the folder inside the zip that holds the raw files
    md5: str | None = None
    file_sha256: dict[str, str] = field(default_factory=dict)


ARCHIVES = {
    "ml-100k": Archive(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        folder="ml-100k",
        md5="0e33842e24a9c977be4e0107933c0723",
        file_sha256={
            "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
            "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
        },
    ),
    "lastfm": Archive(
        url="https://files.grouplens.org/datasets/hetrec2011/hetrec2011-lastfm-2k.zip",
        folder="",
        file_sha256={"artists.dat": "c173881362c6b28551368fecb3c0be5a6a30a6cd859e1f5775413dfe46d48648"},
    ),
}


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(dataset: str, cache_dir: str | Path, archive: Archive | None = None, timeout: float = 60) -> Path:
    """Download and unpack `dataset`'s archive into `cache_dir/<dataset>`; return the raw folder.

    Already-unpacked and verified folders are reused. `archive` overrides the built-in entry (tests
    point it at a local file:// URL).

    Raises:
        ConfigError: no archive is known for `dataset`.
        DownloadError: the network is unreachable (use --raw-dir) or a checksum does not match.
    """
    if archive is None:
        if dataset not in ARCHIVES:
            raise ConfigError(f"no download is known for {dataset!r}; downloadable: {', '.join(ARCHIVES)}. "
                              "Pass --raw-dir with the unpacked files instead.")
        archive = ARCHIVES[dataset]
    target = Path(cache_dir) / dataset
    raw = target / archive.folder if archive.folder else target
    if raw.is_dir() and _verify(raw, archive, raise_=False):
        return raw
    target.mkdir(parents=True, exist_ok=True)
    zip_path = target / Path(archive.url).name
    logger.info("downloading %s", archive.url)
    try:
        with urllib.request.urlopen(archive.url, timeout=timeout) as response, open(zip_path, "wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as exc:
        zip_path.unlink(missing_ok=True)
        raise DownloadError(f"could not download {archive.url} ({exc}). Offline? Download and unpack it elsewhere, "
                            f"then pass --raw-dir PATH to the unpacked folder.") from None
    if archive.md5 and _md5(zip_path) != archive.md5:
        raise DownloadError(f"{zip_path}: MD5 {_md5(zip_path)} does not match the published {archive.md5}; "
                            "delete it and retry, or pass --raw-dir")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extractall(target)
    _verify(raw, archive, raise_=True)
    return raw


def _verify(raw: Path, archive: Archive, raise_: bool) -> bool:
    for name, expected in archive.file_sha256.items():
        path = raw / name
        actual = sha256_file(path) if path.is_file() else "missing"
        if actual != expected:
            if raise_:
                raise DownloadError(f"{path}: sha256 {actual} does not match the known {expected}; the archive is "
                                    "not the published one. Delete the cache folder and retry, or pass --raw-dir")
            return False
    return bool(archive.file_sha256) or raw.is_dir()
