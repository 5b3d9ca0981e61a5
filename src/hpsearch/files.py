"""Small file helpers shared by the commands that write files."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def discard(tmp: Path) -> None:
    """Remove a temporary file if it is there. Called from ``finally`` blocks: on a read-only
    or vanished directory the unlink fails too, and its error must not hide the real one."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: Path, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` (``.NAME.tmpPID`` plus ``suffix``, e.g. ``.png`` for a
    writer that picks its format from the name) to write to; renamed onto ``path`` when the block
    ends, so readers see the old file or the new one, never half of one. On an error it is
    removed and the error propagates (``path`` is left as it was)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        discard(tmp)


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
