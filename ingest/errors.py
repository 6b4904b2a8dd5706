"""The few error types every boundary maps to; callers decide by type, never by message text."""
from __future__ import annotations

from config.errors import ConfigError

__all__ = ["AuthError", "ConfigError", "PermanentError", "RecordError", "StorageError", "TransientError"]


class TransientError(Exception):
    """Worth retrying later; `retry_after` in seconds when the peer said so."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(Exception):
    """Retrying will not help: dead-letter at once."""


class AuthError(Exception):
    """Credentials rejected: stop the adapter and alert, no hot retry loop."""


class StorageError(TransientError):
    """The store could not commit; the sender must retry (SMTP 451, HTTP 503)."""


class RecordError(PermanentError):
    """One submitted record cannot be stored as given (e.g. text that is not valid Unicode): the sender's fault,
    refused alone; the other records of its group commit are stored."""
