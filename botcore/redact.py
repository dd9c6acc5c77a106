"""The one redaction of secrets: applied to every JSON file written (:func:`botcore.atomic.to_jsonable`), every
log line (a filter on every handler, :mod:`botcore.logsetup`) and every alert (:mod:`automation.alerts`).

What it masks, with ``***``:

- the password of a URL: ``postgresql://bot:hunter2@db/optuna`` -> ``postgresql://bot:***@db/optuna``;
- the value of a dict key that names a secret (``password``, ``passwd``, ``secret``, ``token``, ``api_key``,
  ``apikey``, ``key_secret``, ``authorization``, or a name ending in ``_password``, ``_secret``, ``_token`` ...),
  and the same ``key=value`` / ``key: value`` pairs inside text (``?token=abc``, ``Authorization: Bearer abc``);
- any of the ``known`` secret values given by the caller (e.g. the alert notifier's SMTP password).

Names of the environment variables that hold secrets (``password_env: TRADING_BOT_SMTP_PASSWORD``) are not
secrets and are kept. Redacting twice gives the same result as redacting once.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

MASK = "***"

_SECRET_KEYS = frozenset({"password", "passwd", "secret", "token", "api_key", "apikey", "key_secret",
                          "authorization", "access_token", "refresh_token", "client_secret", "private_key"})
_SECRET_SUFFIXES = ("_password", "_passwd", "_secret", "_token", "_api_key", "_apikey")

# scheme://user:password@host -- the password runs to the last "@" before the path (a "/" or whitespace ends it).
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s/]*)@")
# ... and a password holding "/" (base64-made passwords do; SQLAlchemy and libpq take it unescaped), unless what
# follows the ":" is a port and a path (http://host:8080/path?x=a@b holds no password).
_URL_SLASHED_PASSWORD = re.compile(
    r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>(?!\d+/)[^\s@]*/[^\s@]*)@")
# key=value and key: value in free text (query strings, headers, reprs of dicts); "_" before the name means
# another word (password_env), so the name must stand alone.
_TEXT_PAIR = re.compile(
    r"(?P<head>(?<![A-Za-z0-9_])(?:password|passwd|secret|token|api_key|apikey|key_secret|authorization"
    r"|access_token|refresh_token|client_secret)(?![A-Za-z0-9_])['\"]?\s*[:=]\s*['\"]?"
    r"(?:(?:Bearer|Basic|Token)\s+)?)(?P<secret>[^\s'\",;&}\]]+)",
    re.IGNORECASE,
)


def is_secret_key(key: Any) -> bool:
    """True when a mapping key names a secret (its value is masked)."""
    if not isinstance(key, str):
        return False
    name = key.strip().lower().replace("-", "_")
    return name in _SECRET_KEYS or name.endswith(_SECRET_SUFFIXES)


def redact(value: Any, known: Iterable[str] = ()) -> Any:
    """``value`` with its secrets masked: strings are scanned, dicts, lists and tuples are walked (a copy is
    returned; the input is never changed), anything else is returned as it is.

    :param known: secret values to mask wherever they appear (shorter than 3 characters: ignored).
    """
    secrets = sorted({s for s in known if isinstance(s, str) and len(s) >= 3}, key=len, reverse=True)
    return _redact(value, secrets)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        return _redact_text(value, secrets)
    if isinstance(value, dict):
        return {k: MASK if is_secret_key(k) and not _empty(v) else _redact(v, secrets) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, secrets) for v in value)
    return value


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value)


def _redact_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
        text = _URL_SLASHED_PASSWORD.sub(lambda m: m["head"] + MASK + "@", text)
    if _might_hold_pair(text):
        text = _TEXT_PAIR.sub(lambda m: m["head"] + MASK, text)
    return text


_PAIR_HINTS = ("pass", "secret", "token", "key", "auth")


def _might_hold_pair(text: str) -> bool:
    lowered = text.lower()
    return any(h in lowered for h in _PAIR_HINTS)
