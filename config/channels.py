"""Config models of each channel kind, and the registry `kind -> model` used to validate `[[channels]]`.

Adding a channel instance is a config edit; adding a channel kind is one model here plus one factory in
channels/registry.py.
"""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator


class ChannelEntry(BaseModel):
    """A `[[channels]]` table before its kind-specific validation."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str
    name: str
    enabled: bool = True

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ChannelOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Open311Options(ChannelOptions):
    # Served on the daemon's HTTP server; nothing to set but limits.
    max_photos: int = Field(5, ge=0)
    api_keys: list[SecretStr] = []  # empty: open to the public app


class TranscriptOptions(ChannelOptions):
    folder: Path = Path("var/transcripts")
    poll_seconds: float = Field(1.0, gt=0)
    max_bytes: int = Field(1024 * 1024, gt=0)


class MessengerOptions(ChannelOptions):
    # Webhook on /webhooks/messenger/<name>; secrets usually given as "env:NAME".
    app_secret: SecretStr  # signs X-Hub-Signature-256
    page_token: SecretStr  # Send API access token
    verify_token: SecretStr  # echoed check of the GET subscription handshake
    graph_base_url: str = "https://graph.facebook.com"
    graph_version: str = "v21.0"
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    max_media_bytes: int = Field(8 * 1024 * 1024, gt=0)
    media_budget_seconds: float = Field(0.6, gt=0)  # media fetch time allowed before the 200; the rest is a job
    send_timeout_seconds: float = Field(10.0, gt=0)
    # Replies later than Messenger's 24 h window need a message tag.
    late_reply_tag: str = "ACCOUNT_UPDATE"
    # A report placed nowhere (no place in its words, no location shared) is held while the page asks where;
    # the answer fills the place, and without one the report is classified as it is when the wait ends.
    ask_place: bool = True
    place_wait_seconds: float = Field(1800.0, gt=0)


class TelegramOptions(ChannelOptions):
    bot_token: SecretStr
    mode: Literal["polling", "webhook"] = "polling"
    base_url: str = "https://api.telegram.org/bot"  # the token is appended (or put at "{token}")
    base_file_url: str = "https://api.telegram.org/file/bot"
    webhook_secret: SecretStr | None = None  # required in webhook mode: X-Telegram-Bot-Api-Secret-Token
    webhook_url: str | None = None  # when set (webhook mode), registered with setWebhook at start
    poll_timeout_seconds: int = Field(30, ge=0, le=50)
    max_body_bytes: int = Field(1024 * 1024, gt=0)
    max_photo_bytes: int = Field(10 * 1024 * 1024, gt=0)
    dialogue: bool = True  # ask for a missing place / phone before filing the report
    dialogue_timeout_seconds: float = Field(1800.0, gt=0)  # then file it with what we have

    @field_validator("bot_token")
    @classmethod
    def _token_shape(cls, value: SecretStr) -> SecretStr:
        head, sep, rest = value.get_secret_value().partition(":")
        if not (sep and head.isdigit() and rest):
            raise ValueError("bot_token must look like <bot id>:<secret> (as BotFather gives it)")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> "TelegramOptions":
        if self.mode == "webhook" and (self.webhook_secret is None or not self.webhook_secret.get_secret_value()):
            raise ValueError("webhook mode needs webhook_secret")
        return self


class EmailReplyOptions(ChannelOptions):
    """Outgoing SMTP relay for answers to email reporters (acknowledgements, results)."""

    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    from_address: str  # e.g. "1022@tphcm.gov.vn"; also the domain of our Message-IDs
    from_name: str = "Cổng 1022 TP.HCM"
    username: str | None = None
    password: SecretStr | None = None
    starttls: bool = False
    ssl: bool = False
    timeout_seconds: float = Field(30.0, gt=0)


class EmailLimitOptions(ChannelOptions):
    """Parsing caps shared by the SMTP listener and the IMAP poller."""

    max_message_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_header_bytes: int = Field(64 * 1024, gt=0)
    max_attachments: int = Field(10, ge=0)
    max_attachment_bytes: int = Field(10 * 1024 * 1024, gt=0)
    parse_seconds: float = Field(5.0, gt=0)
    reply: EmailReplyOptions | None = None  # set on one email channel to answer reporters by email
    # authserv-ids of the relays in front of this channel (our MX, the mailbox's server) whose
    # Authentication-Results headers are believed; they must strip such headers arriving from outside
    # (RFC 8601 §5). Empty: no sender verdict is known, so emailed agency answers wait for an operator unless
    # [dispatch.email_answers] require_sender_auth = false.
    trusted_authserv_ids: list[str] = []


class SmtpOptions(EmailLimitOptions):
    host: str = "127.0.0.1"
    port: int = Field(8025, ge=0, le=65535)
    hostname: str = "localhost"  # name in the 220 banner; never looked up in DNS
    recipients: list[str] = Field(min_length=1)  # public addresses we accept mail for; others get 550 5.1.1
    max_line_bytes: int = Field(4096, ge=1001)  # RFC 5321 says 1000; real clients send longer HTML lines
    max_recipients: int = Field(20, ge=1)
    max_commands: int = Field(1000, ge=10)  # per command kind and connection
    max_connections: int = Field(100, ge=1)  # open sessions at once; beyond it a new client gets 421 and retries
    timeout_seconds: float = Field(60.0, gt=0)  # idle time allowed between commands
    tls_cert: Path | None = None  # both set: STARTTLS offered
    tls_key: Path | None = None
    require_starttls: bool = False
    auth_users: dict[str, SecretStr] = {}  # login -> password; empty: no AUTH
    auth_required: bool = False
    auth_require_tls: bool = True
    # The peers (addresses or networks) our relay connects from. Only mail from one of them has its
    # Authentication-Results read (against trusted_authserv_ids): anyone else who can reach the port could write
    # our relay's id, so their mail counts as carrying no verdict at all. Default: loopback only, the relay on
    # this host (the listener's own default address); a relay on another host must be listed.
    trusted_relays: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
        ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))

    @field_validator("trusted_relays", mode="before")
    @classmethod
    def _relay_networks(cls, value: Any) -> Any:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ValueError("trusted_relays must be a list of addresses or networks, e.g. [\"127.0.0.1/32\"]")
        networks = []
        for item in value:
            try:
                # strict: "10.0.0.5/24" has host bits set, a typo for the address or for 10.0.0.0/24; refuse it
                networks.append(ipaddress.ip_network(str(item).strip(), strict=True))
            except ValueError as exc:
                raise ValueError(f"trusted_relays: {item!r} is not an IP address or network ({exc})") from None
        return tuple(networks)

    @model_validator(mode="after")
    def _tls_pair(self) -> "SmtpOptions":
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key must be set together")
        if self.require_starttls and self.tls_cert is None:
            raise ValueError("require_starttls needs tls_cert and tls_key")
        if self.auth_required and not self.auth_users:
            raise ValueError("auth_required needs auth_users")
        return self


class ImapOptions(EmailLimitOptions):
    host: str
    port: int = Field(993, ge=1, le=65535)
    ssl: bool = True  # implicit TLS (993); with ssl=false, starttls upgrades a plain connection
    starttls: bool = False
    username: str
    password: SecretStr
    folder: str = "INBOX"
    processed_folder: str = "Processed"
    idle: bool = True  # used when the server offers IDLE; else poll
    idle_seconds: float = Field(600.0, gt=0, le=1740)  # re-issue IDLE before servers' 30 min cut-off
    poll_seconds: float = Field(60.0, gt=0)
    fetch_batch: int = Field(25, ge=1, le=500)
    timeout_seconds: float = Field(60.0, gt=0)
    backoff_base: float = Field(2.0, gt=0)
    backoff_cap: float = Field(300.0, gt=0)


CHANNEL_MODELS: dict[str, type[ChannelOptions]] = {
    "open311": Open311Options,
    "transcripts": TranscriptOptions,
    "messenger": MessengerOptions,
    "telegram": TelegramOptions,
    "smtp": SmtpOptions,
    "imap": ImapOptions,
}
