"""``python -m hpsearch.cli``: the ``hpsearch`` command."""

from __future__ import annotations

import sys

from hpsearch.cli.main import main

sys.exit(main())
