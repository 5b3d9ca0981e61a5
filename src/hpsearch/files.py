"""Small file helpers shared by the commands that write files."""

from __future__ import annotations

import contextlib
from pathlib import Path


def discard(tmp: Path) -> None:
    """Remove a temporary file if it is there. Called from ``finally`` blocks: on a read-only
    or vanished directory the unlink fails too, and its error must not hide the real one."""
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
