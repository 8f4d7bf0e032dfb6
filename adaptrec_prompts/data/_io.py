"""Small helpers shared by the raw-file loaders: file checks, line iteration, checksums."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from adaptrec_prompts.errors import DataError


def sha256_file(path: Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def require_folder(raw_dir: str | Path, layout: str) -> Path:
    """Return `raw_dir` as a Path, or raise naming the expected layout when it is not a folder."""
    folder = Path(raw_dir)
    if not folder.is_dir():
        raise DataError(f"raw folder {str(folder)!r} does not exist or is not a folder; expected {layout}")
    return folder


def require_file(folder: Path, name: str, layout: str) -> Path:
    """Return `folder/name`, or raise naming the missing file and the expected folder layout."""
    path = folder / name
    if not path.is_file():
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise DataError(
            f"missing file {str(path)!r}; expected {layout}. The folder holds: {present or 'nothing'}. "
            "Pass --raw-dir pointing at the unpacked archive."
        )
    return path


def iter_lines(path: Path, encoding: str, skip_header: bool = False) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without its newline), skipping blank lines.

    Raises:
        DataError: a line is not valid `encoding` (names the file, line and bytes).
    """
    with open(path, "rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            if skip_header and lineno == 1:
                continue
            try:
                line = raw.decode(encoding)
            except UnicodeDecodeError as exc:
                bad = raw[max(0, exc.start - 10) : exc.end + 10]
                raise DataError(f"{path}:{lineno}: not valid {encoding} at byte {exc.start} of the line "
                                f"(near {bad!r}); the file is damaged or in another encoding: re-download it or "
                                f"convert it to {encoding}") from None
            line = line.rstrip("\r\n")
            if line.strip():
                yield lineno, line


def malformed(path: Path, lineno: int, text: str, expected: str) -> DataError:
    """Build the error for a line that does not have the published format."""
    shown = text if len(text) <= 120 else text[:117] + "..."
    return DataError(f"{path}:{lineno}: malformed line {shown!r}; expected {expected}")


def parse_ints(path: Path, lineno: int, text: str, fields: list[str], expected: str) -> list[int]:
    """Parse every field as int, raising a file:line error on the first that is not."""
    try:
        return [int(value) for value in fields]
    except ValueError:
        raise malformed(path, lineno, text, expected) from None
