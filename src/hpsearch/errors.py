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
