"""The ``hpsearch`` command line: ``main`` (the parser, run/worker/train/confirm), ``results``
(the commands that read a study, ``dashboard`` among them) and ``serve``. Parsing and printing
only.
"""

from __future__ import annotations

from hpsearch.cli.main import main

__all__ = ["main"]
