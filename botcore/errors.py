"""Errors that end a script with one clear line and a chosen exit code (no traceback on the terminal)."""
from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment; the message says what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(UserError):
    """training_config.json or a flag holds a wrong type, unknown key or impossible value."""

    exit_code = 2


class DataError(UserError):
    """Market data is missing, unreadable or unusable."""


class ModelFileError(UserError):
    """A model file is corrupt, truncated, tampered with or incompatible."""
