"""The one exception family for mistakes a user can make.

Anything raised from here is turned into a one-line message and a non-zero exit code at the CLI
boundary; everything else is our bug and keeps its traceback.
"""

from __future__ import annotations


class HpsearchError(Exception):
    """A problem the user can fix: bad study file, missing data, bad storage URL, ..."""

    exit_code = 1


class ConfigError(HpsearchError):
    """A study file or ``--set`` override that does not validate."""

    exit_code = 2


class DataError(HpsearchError):
    """A data set that is missing, empty or not in the ImageFolder layout."""


class StorageError(HpsearchError):
    """A storage URL that cannot be used, or a study that is not in it."""


MESSAGE_LIMIT = 200  # characters of another library's error message quoted in one of ours


def first_line(error: BaseException | str, limit: int = MESSAGE_LIMIT) -> str:
    """The first non-blank line of ``error``'s message, at most ``limit`` characters (a cut one
    ends in "..."), to quote a library's error inside a one-line message; an exception with an
    empty message gives its type name."""
    text = error if isinstance(error, str) else str(error)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line and not isinstance(error, str):
        line = type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
