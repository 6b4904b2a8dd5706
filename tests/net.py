"""Network helpers every test shares: one definition, imported as `tests.net`."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback TCP port free right now (the OS picks it; a server started at once will get it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
