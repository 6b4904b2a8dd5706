"""Sending one email through an SMTP relay, with the relay's answers mapped to our error types once.

Blocking (smtplib): call it from a worker thread. Used by agency dispatch, reporter replies and the weekly
reports alike, so a 4xx is retried and a 5xx given up the same way everywhere.
"""
from __future__ import annotations

import logging
import re
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage, Message
from typing import Protocol

from pydantic import SecretStr

from .errors import PermanentError, TransientError

log = logging.getLogger(__name__)


class RelaySettings(Protocol):
    host: str
    port: int
    ssl: bool
    starttls: bool
    username: str | None
    password: SecretStr | None
    timeout_seconds: float


def send_message(relay: RelaySettings, message: EmailMessage | Message, *, from_addr: str | None = None,
                 to_addrs: Sequence[str] | None = None) -> None:
    """Raise TransientError for 4xx answers, network trouble and a refused login; PermanentError for 5xx."""
    try:
        client: smtplib.SMTP
        if relay.ssl:
            client = smtplib.SMTP_SSL(relay.host, relay.port, timeout=relay.timeout_seconds,
                                      context=ssl.create_default_context())
        else:
            client = smtplib.SMTP(relay.host, relay.port, timeout=relay.timeout_seconds)
        with client:
            if relay.starttls and not relay.ssl:
                client.starttls(context=ssl.create_default_context())
            if relay.username and relay.password is not None:
                client.login(relay.username, relay.password.get_secret_value())
            refused = client.send_message(message, from_addr=from_addr, to_addrs=list(to_addrs) if to_addrs else None)
        if refused:  # some recipients refused, others accepted
            _raise_for_codes([code for code, _ in refused.values()])
    except smtplib.SMTPAuthenticationError:
        # Our relay account, not the recipient: retry once the admin has fixed it rather than give up.
        log.error("SMTP relay %s rejected our login", relay.host)
        raise TransientError("SMTP relay login rejected", retry_after=300.0) from None
    except smtplib.SMTPRecipientsRefused as exc:
        _raise_for_codes([code for code, _ in exc.recipients.values()])
    except smtplib.SMTPResponseException as exc:
        _raise_for_codes([exc.smtp_code])
    except (smtplib.SMTPException, OSError) as exc:
        raise TransientError(f"SMTP relay unreachable ({type(exc).__name__})") from None


# CR, LF and every other control or line separator: nothing from a reporter may start a new header line.
_NOT_IN_HEADER = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_ADDR_SPEC = re.compile(r"[^\s@<>,;:\"()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}")


def header_text(value: str, max_chars: int = 200) -> str:
    """Text from outside (a reporter's subject or name) made safe for one header: line breaks and controls
    become spaces, length bounded. Intake refuses such fields already; this is the last line at the boundary."""
    return " ".join(_NOT_IN_HEADER.sub(" ", value).split())[:max_chars]


def single_address(value: str) -> str:
    """A reporter's email as exactly one addr-spec for a To header, or PermanentError (never a header list)."""
    candidate = value.strip()
    if not _ADDR_SPEC.fullmatch(candidate):
        raise PermanentError("not a single email address")
    return candidate


def _raise_for_codes(codes: list[int]) -> None:
    if any(400 <= code < 500 for code in codes):
        raise TransientError(f"SMTP deferred: {sorted(set(codes))}") from None
    raise PermanentError(f"SMTP refused: {sorted(set(codes))}") from None
