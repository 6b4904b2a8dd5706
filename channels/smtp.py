"""The SMTP listener: aiosmtpd's `SMTP` protocol served on the daemon's own loop (no threaded Controller).

Owns the SMTP dialogue and its limits. A message is answered `250` only once `store.submit` has committed
it (or, for mail we cannot parse, once it sits in quarantine); any failure of ours answers
`451 4.3.0` so the sending server retries later. Never a 5xx for our own fault, never exception text.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import ssl
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from config.channels import ChannelEntry, SmtpOptions
from ingest.app import AppContext, Service
from ingest.faults import ThrottledLog

from .email_intake import EmailIntake, limits_from
from .email_reply import register_reply_sender

log = logging.getLogger(__name__)
_throttled = ThrottledLog(log)  # a disk staying full or a flood of clients: said once a minute, not per message

TEMPFAIL = "451 4.3.0 Temporary local problem, please try again later"
BUSY = b"421 4.3.2 Too many connections, please try again later\r\n"


class _LimitedSMTP(SMTP):
    """aiosmtpd reads `line_length_limit` when it builds its stream reader, so it must be set first.
    `sessions` counts the open connections of one listener (the cap on them)."""

    def __init__(self, handler: Any, *, line_length_limit: int, sessions: list[int], **kwargs: Any) -> None:
        self.line_length_limit = line_length_limit
        self._sessions = sessions
        self._counted = False
        super().__init__(handler, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._sessions[0] += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self._sessions[0] -= 1
        super().connection_lost(exc)


class _Busy(asyncio.Protocol):
    """Past the connection cap: RFC 5321 421 (the client queues the mail and retries), then close."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(BUSY)
        transport.close()


def base_address(address: str) -> str:
    """`box+tag@domain` -> `box@domain`: a configured mailbox accepts its sub-addresses (our reply tokens)."""
    local, at, domain = address.strip().strip("<>").lower().rpartition("@")
    return f"{local.partition('+')[0]}{at}{domain}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def from_trusted_relay(peer: Any, relays: tuple[Network, ...]) -> bool:
    """Whether the connection's peer (`transport.get_extra_info("peername")`) is one of our relays. A listener on
    "::" sees IPv4 clients as ::ffff:a.b.c.d, matched against the IPv4 networks too; anything that is not an IP
    peer (a Unix socket, none at all) is no relay."""
    if not isinstance(peer, (tuple, list)) or not peer or not isinstance(peer[0], str):
        return False
    try:
        address = ipaddress.ip_address(peer[0].partition("%")[0])  # without an IPv6 scope ("fe80::1%eth0")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in relays)


class IntakeHandler:
    """aiosmtpd handler hooks: RCPT filtering, DATA -> durable intake, exceptions -> 451."""

    def __init__(self, intake: EmailIntake, recipients: list[str], max_recipients: int,
                 trusted_relays: tuple[Network, ...] = ()) -> None:
        self.intake = intake
        self.recipients = {r.strip().lower() for r in recipients}
        self.max_recipients = max_recipients
        self.trusted_relays = trusted_relays
        self.accepted = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        if base_address(address) not in self.recipients:
            return "550 5.1.1 No such mailbox here"
        if len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content
        if not isinstance(raw, (bytes, bytearray)):
            return TEMPFAIL
        # Authentication-Results are our relay's word only when our relay handed us the mail: anyone else who can
        # connect could write a header under its authserv-id (the relay strips those only from mail it carries).
        relayed = from_trusted_relay(session.peer, self.trusted_relays)
        try:
            outcome = await self.intake.accept(bytes(raw), envelope_from=envelope.mail_from,
                                               envelope_to=tuple(envelope.rcpt_tos), believe_auth_results=relayed)
        except Exception as exc:  # StorageError or anything else from the store: the sender must retry
            _throttled.log(logging.ERROR, f"451:{type(exc).__name__}", "%s: mail not stored, answered 451 (%s)",
                           self.intake.channel_instance, type(exc).__name__)
            return TEMPFAIL
        self.accepted += 1
        if outcome.quarantine_id is not None:
            return f"250 2.0.0 Held for review Q{outcome.quarantine_id}"
        return f"250 2.0.0 Accepted as report {outcome.report_id}"

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default answers "500 Error: (Type) message": a permanent failure that leaks internals.
        _throttled.log(logging.ERROR, f"session:{type(error).__name__}", "%s: SMTP session error (%s)",
                       self.intake.channel_instance, type(error).__name__)
        return TEMPFAIL


class Authenticator:
    def __init__(self, users: dict[str, str]) -> None:
        self.users = {k.encode(): v.encode() for k, v in users.items()}

    def __call__(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                 auth_data: Any) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        expected = self.users.get(auth_data.login)
        # Compare against a dummy for unknown logins so timing does not tell which logins exist.
        ok = hmac.compare_digest(expected or b"\0" * 32, auth_data.password) and expected is not None
        return AuthResult(success=ok, handled=False)


class SmtpService:
    """One listening socket; `port` is the bound port once `started` is set (useful with port 0)."""

    def __init__(self, name: str, intake: EmailIntake, options: SmtpOptions) -> None:
        self.name = name
        self.options = options
        self.handler = IntakeHandler(intake, options.recipients, options.max_recipients, options.trusted_relays)
        self.started = asyncio.Event()
        self.port: int | None = None
        self.sessions = [0]  # open connections; a list so each protocol instance updates the same count
        self._tls = _tls_context(options)
        self._authenticator = Authenticator(
            {k: v.get_secret_value() for k, v in options.auth_users.items()}) if options.auth_users else None

    def protocol(self) -> asyncio.Protocol:
        o = self.options
        if self.sessions[0] >= o.max_connections:
            _throttled.log(logging.WARNING, "421", "%s: %d SMTP connections open, refusing another with 421",
                           self.name, self.sessions[0])
            return _Busy()
        return _LimitedSMTP(
            self.handler,
            sessions=self.sessions,
            line_length_limit=o.max_line_bytes,
            data_size_limit=o.max_message_bytes,
            enable_SMTPUTF8=True,
            decode_data=False,
            hostname=o.hostname,
            ident="1022 ESMTP",
            tls_context=self._tls,
            require_starttls=o.require_starttls,
            timeout=o.timeout_seconds,
            auth_required=o.auth_required,
            auth_require_tls=o.auth_require_tls,
            authenticator=self._authenticator,
            command_call_limit=o.max_commands,
            loop=asyncio.get_running_loop(),
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(self.protocol, host=self.options.host, port=self.options.port,
                                          reuse_address=True)
        self.port = server.sockets[0].getsockname()[1]
        log.info("%s: SMTP listening on %s:%d", self.name, self.options.host, self.port)
        self.started.set()
        try:
            async with server:
                await server.serve_forever()
        finally:
            server.close()
            log.info("%s: SMTP listener stopped", self.name)


def _tls_context(options: SmtpOptions) -> ssl.SSLContext | None:
    if options.tls_cert is None or options.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(options.tls_cert), str(options.tls_key))
    return context


def build(ctx: AppContext, entry: ChannelEntry, options: SmtpOptions) -> Service:
    intake = EmailIntake(ctx.store, entry.name, limits_from(options),
                         trusted_authserv_ids=options.trusted_authserv_ids)
    if options.reply is not None:
        register_reply_sender(ctx, options.reply)
    if options.trusted_authserv_ids and not options.trusted_relays:
        log.warning("%s: trusted_authserv_ids is set but trusted_relays is empty: no Authentication-Results on this"
                    " listener are believed", entry.name)
    return SmtpService(entry.name, intake, options)
