"""The error a configuration that cannot work raises. It lives here, beside the code that raises it, so that config
needs nothing from the stages; ingest.errors re-exports it with the other boundary errors."""
from __future__ import annotations


class ConfigError(Exception):
    """The configuration cannot work; the message lists every problem with its key path."""
