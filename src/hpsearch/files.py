"""Small file helpers shared by the commands that write files."""

from __future__ import annotations

import contextlib
from pathlib import Path


def discard(tmp: Path) -> None:
    """Remove a temporary file if it is there. Called from ``finally`` blocks: on a read-only
    or vanished directory the unlink fails too, and its error must not hide the real one."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


def what_is(path: Path, expected: str) -> str:
    """What ``path`` is, for a message that must not say "does not exist" about a directory,
    a file or a device that does exist: "does not exist", or e.g. "is a directory, not
    {expected}"."""
    if not path.exists():
        return "is a broken symbolic link" if path.is_symlink() else "does not exist"
    if path.is_dir():
        found = "a directory"
    elif path.is_file():
        found = "a file"
    else:
        found = "a device, pipe or socket"
    return f"is {found}, not {expected}"
