"""Database credentials never shown: every URL or command line a command prints, logs, records
on a trial or serves over HTTP goes through :func:`mask_url` or :func:`mask_secrets`."""

from __future__ import annotations

import re

import sqlalchemy.exc
from sqlalchemy.engine import make_url

# user:PASSWORD@host in a URL: up to the last "@" before the host (a password written without
# percent-encoding may hold "@" or "/")
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][\w+.-]*://[^:/@\s]*:)\S*@(?=[^@/\s]*(?:[/?#\s]|$))")
# password= and sslpassword= as libpq and SQLAlchemy take them: in a URL's query string
# (?password=..., &sslpassword=...) or in a keyword/value connection string (password=...)
_KEY_PASSWORD = re.compile(r"(?i)(\b(?:ssl)?password=)(?:'(?:[^'\\]|\\.)*'|[^&\s#;]*)")


def mask_secrets(text: str) -> str:
    """``text`` with every credential a database URL or connection string can carry replaced by
    ``***``: the password of ``user:password@``, and ``password=`` and ``sslpassword=``
    parameters (a ``passfile`` path is not a secret and stays). For command lines, messages,
    and anything recorded or served."""
    return _KEY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", text))


def mask_url(url: str) -> str:
    """The URL with its credentials replaced by ``***``, safe to print, log and record."""
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # e.g. a port that is not a number
        shown = url
    return mask_secrets(shown)
