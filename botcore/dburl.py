"""Database URLs as the toolkit's two databases (the Optuna storage, the paper ledger) hand them to SQLAlchemy.

PostgreSQL goes through psycopg 3 (``psycopg[binary]`` in requirements.txt). SQLAlchemy reads a bare
``postgresql://`` as psycopg2, which is not installed, and refuses the ``postgres://`` spelling that hosting
providers print, so both are mapped to ``postgresql+psycopg://``; a URL naming its driver
(``postgresql+psycopg2://``, ``mysql+pymysql://``) is kept. A connection attempt to an unreachable PostgreSQL
host ends after :data:`CONNECT_TIMEOUT_SECONDS` instead of libpq's unlimited wait, unless the URL sets
``connect_timeout`` itself.

The password may also stay out of the URL entirely: libpq reads ``PGPASSWORD`` and ``~/.pgpass`` when the URL has
none, which keeps it out of command lines and config files.
"""
from __future__ import annotations

from typing import Any

CONNECT_TIMEOUT_SECONDS = 30

_PSYCOPG = "postgresql+psycopg://"
_BARE_POSTGRES = ("postgresql://", "postgres://")


def sqlalchemy_url(url: str) -> str:
    """``url`` with a bare PostgreSQL scheme mapped to psycopg 3; any other URL unchanged."""
    for scheme in _BARE_POSTGRES:
        if url[:len(scheme)].lower() == scheme:
            return _PSYCOPG + url[len(scheme):]
    return url


def connect_args(url: str) -> dict[str, Any]:
    """Driver options for ``url``: a connection timeout for psycopg when the URL does not set one."""
    mapped = sqlalchemy_url(url)
    if mapped.lower().startswith(_PSYCOPG) and "connect_timeout=" not in mapped.partition("?")[2]:
        return {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return {}
