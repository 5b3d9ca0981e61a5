"""Small file helpers shared by the commands that write files."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path


def discard(tmp: Path) -> None:
    """Remove a temporary file if it is there. Called from ``finally`` blocks: on a read-only
    or vanished directory the unlink fails too, and its error must not hide the real one."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_write(path: Path, suffix: str = "") -> Iterator[Path]:
    """A path to write ``path``'s new contents to.

    For a regular file (or a new one) it is a temporary file beside the target, made by
    ``tempfile`` (a name nobody can guess, created 0600), ending in ``suffix`` (e.g. ``.png``
    for a writer that picks its format from the name); when the block ends it takes the old
    file's mode and owner (a new file: 0666 less the umask) and is renamed onto the target, so
    readers see the old file or the new one, never half of one. On an error it is removed and
    the error propagates (the target is left as it was).

    A symbolic link is followed: the file it points to is replaced and the link stays. Anything
    that is not a regular file (``/dev/null``, ``/dev/stdout``, a FIFO) is written in place: it
    is the path itself that the block gets, and nothing is renamed over it.
    """
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st: os.stat_result | None = target.stat()
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        yield target  # a device, a FIFO or a socket: write through it
        return
    fd, name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if st is not None:
            os.chmod(tmp, stat.S_IMODE(st.st_mode))
            if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                with contextlib.suppress(PermissionError):  # only root may give files away
                    os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        discard(tmp)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (setting and
    restoring it would race with other threads creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
