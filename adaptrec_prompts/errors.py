"""Named errors. Every message says what was received, what was expected, and how to fix it."""


class AdaptRecError(Exception):
    """Base class of every error this package raises on purpose.

    The message names what a Python caller passes (`overwrite=True`, `build_neighbors(...)`). Where the
    command line spells the fix differently (`--overwrite`, `adaptrec index neighbors`), the error also
    carries that wording as `cli` (keyword argument), and `adaptrec` prints `cli_message` instead.
    """

    def __init__(self, *args, cli: str | None = None):
        super().__init__(*args)
        self.cli = cli

    @property
    def cli_message(self) -> str:
        """The message as the command line words it (flags and subcommands instead of Python arguments)."""
        return self.cli if self.cli is not None else str(self)


class DataError(AdaptRecError, ValueError):
    """A data file is missing, malformed or inconsistent. The message names the file (and line)."""


class UnsafePickleError(DataError):
    """A pickle asked for a global outside the DataFrame allow-list and was refused unread."""


class ConfigError(AdaptRecError, ValueError):
    """An option has a value that cannot work; the message lists the valid values."""


class UnknownItemError(AdaptRecError, ValueError):
    """A title or item id given to a live program is not in the prepared folder's item table; the message
    names it, the table and the closest known titles."""


class OutputExistsError(AdaptRecError, FileExistsError):
    """An output folder exists already; finished work is never overwritten silently."""


class DownloadError(AdaptRecError):
    """A download failed or its checksum did not match."""


class LeakageError(AdaptRecError, ValueError):
    """An operation could not apply a leakage rule (e.g. rows without user ids) and refused instead."""


class Interrupted(AdaptRecError):
    """The user stopped a run (Ctrl-C); the message says what is saved and how to resume."""


class RunInUseError(AdaptRecError):
    """Another process holds the run folder's lock."""


class IncompleteRunError(AdaptRecError):
    """A run finished with examples that failed on provider errors; rerunning the command retries them.

    `results` holds what was scored (a `Results`, when the run got that far), so a caller can still
    report it: the metrics cover the scored examples only, which is why the run is not called finished.
    """

    def __init__(self, message: str, results=None, *, cli: str | None = None):
        super().__init__(message, cli=cli)
        self.results = results


class ProviderError(AdaptRecError):
    """An API provider or server refused the run in a way no retry fixes (a key, a URL, a model name, a reply
    that is not a chat completion); the message says which and what to change."""


class DiskFullError(AdaptRecError, OSError):
    """A write failed because the disk (or a file-size limit) is full; the message names the file, and what
    was written before is kept."""

    def __init__(self, message: str, errno: int | None = None):
        super().__init__(message)
        self.errno = errno


# errno values that mean "the disk is full": no space, quota exceeded, a file-size limit
DISK_FULL = (28, 122, 27)  # ENOSPC, EDQUOT, EFBIG
