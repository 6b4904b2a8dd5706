"""The `[dispatch]` config section: agency targets (webhook, email), delivery limits, SMTP, SMS gateway, clocks.

Validated by `config.loader` through EXTRA_SECTIONS; the dispatch stage calls `dispatch_settings(settings)` to
get the typed model. Adding a target kind is one model here plus one sender in dispatch/delivery.py.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .network import refused_host

from .loader import EXTRA_SECTIONS

BUNDLED_CALENDAR = Path(__file__).with_name("calendar-vn.toml")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    return value


def _check_public(url: str, allow_private: bool) -> None:
    # Refused at every attempt by the SSRF guard: a configuration error now, not three days of retries.
    if not allow_private and (reason := refused_host(url)) is not None:
        raise ValueError(f"url: {reason}; the SSRF guard refuses it (set allow_private = true only for an"
                         " endpoint on a private network)")


class WebhookTarget(_Model):
    kind: Literal["webhook"]
    name: str = "webhook"
    url: str
    # Standard Webhooks secrets `whsec_<base64>`; two while a key rotates (each request is signed with both).
    secrets: list[SecretStr] = Field(min_length=1, max_length=2)
    timeout_seconds: float = Field(10.0, gt=0)
    concurrency: int = Field(4, ge=1, le=64)
    # The SSRF guard refuses private, loopback and link-local addresses unless this target is allowed here.
    allow_private: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)

    @model_validator(mode="after")
    def _public(self) -> "WebhookTarget":
        _check_public(self.url, self.allow_private)
        return self

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, value: list[SecretStr]) -> list[SecretStr]:
        for secret in value:
            raw = secret.get_secret_value()
            if not raw.startswith("whsec_"):
                raise ValueError("a webhook secret must start with 'whsec_'")
            try:
                key = base64.b64decode(raw[len("whsec_"):], validate=True)
            except ValueError:
                raise ValueError("a webhook secret must be 'whsec_' followed by base64") from None
            if len(key) < 16:
                raise ValueError("a webhook secret must hold at least 16 bytes")
        return value


class EmailTarget(_Model):
    kind: Literal["email"]
    name: str = "email"
    to: list[str] = Field(min_length=1)
    cc: list[str] = []
    concurrency: int = Field(2, ge=1, le=16)


Target = Annotated[WebhookTarget | EmailTarget, Field(discriminator="kind")]


class EscalationContacts(_Model):
    # Who hears when this agency's clocks near or pass their deadlines (a digest per tick, not a message per
    # case); the operator unit's contacts hear about every agency.
    email: list[str] = []
    sms: list[str] = []  # phone numbers, through the `[dispatch.sms]` gateway


class AgencyDispatch(_Model):
    targets: list[Target] = []
    escalation: EscalationContacts = EscalationContacts()
    # Art. 9: a confidential reporter's name and contacts reach this agency only when this is true.
    receives_confidential: bool = False
    # Name of the key in `[secrets]` holding this agency's answer-API token; default "agency.<agency-id>".
    token_secret: str | None = None
    # Addresses allowed to answer by replying to the dispatch email; default: the email targets' `to`.
    reply_from: list[str] = []


class SmtpConfig(_Model):
    host: str = "127.0.0.1"
    port: int = Field(25, ge=1, le=65535)
    starttls: bool = False
    ssl: bool = False
    username: str | None = None
    password: SecretStr | None = None
    from_addr: str = "1022@tphcm.gov.vn"
    # Agencies' replies go here; the email channel hands them to dispatch.answers.apply_email_reply.
    reply_to: str | None = None
    timeout_seconds: float = Field(30.0, gt=0)
    message_id_domain: str = "1022.tphcm.gov.vn"


class SmsGatewayConfig(_Model):
    # An HTTP SMS gateway: POST JSON {"to", "text", "sender", "id"} with `Authorization: Bearer <token>`.
    url: str | None = None
    token: SecretStr | None = None
    sender: str = "TPHCM1022"
    timeout_seconds: float = Field(10.0, gt=0)
    allow_private: bool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else _check_http_url(value)

    @model_validator(mode="after")
    def _public(self) -> "SmsGatewayConfig":
        if self.url is not None:
            _check_public(self.url, self.allow_private)
        return self


class DeliveryConfig(_Model):
    # A delivery not accepted within this many seconds is dead-lettered with an alert (replayable).
    deadline_seconds: float = Field(3 * 86400.0, gt=0)
    backoff_base_seconds: float = Field(5.0, gt=0)
    backoff_cap_seconds: float = Field(1800.0, gt=0)
    poll_seconds: float = Field(1.0, gt=0)
    batch: int = Field(64, ge=1, le=1024)
    lease_seconds: float = Field(120.0, gt=0)


class ClockConfig(_Model):
    # Calendar of Vietnamese public holidays (Tết included) and make-up working Saturdays.
    calendar: Path | None = None  # None: bundled config/calendar-vn.toml
    extra_holidays: list[str] = []  # ISO dates added to the calendar, e.g. a one-off day off
    # A warning is raised when this fraction of a deadline's span is left (0.2: at 80 % elapsed)...
    warn_fraction: float = Field(0.2, gt=0, lt=1)
    # ...but never less than this many seconds ahead.
    warn_min_seconds: float = Field(300.0, ge=0)
    tick_seconds: float = Field(30.0, gt=0)


class NotifyConfig(_Model):
    enabled: bool = True
    # Reporters on channels without a registered reply sender get an SMS when they left a phone number.
    sms_fallback: bool = True


class EmailAnswersConfig(_Model):
    # An emailed answer changes a case only with the dispatch mail's reply token AND a From address of the
    # agency holding the case that a relay we trust (the email channel's `trusted_authserv_ids`) saw pass
    # SPF/DKIM/DMARC. False: where no trusted verdict exists at all, token and address suffice (a trusted "fail"
    # still stops the answer). Whatever fails becomes a note on the case for operators to confirm.
    require_sender_auth: bool = True


class EvidenceConfig(_Model):
    # Topics whose cases may be closed as resolved only with at least one photo of the site (Art. 7.1 "record
    # the result with photos"); None: every infrastructure topic.
    photo_topics: list[str] | None = None
    # Photos an agency names by URL are fetched through the SSRF guard: only public addresses unless true.
    fetch_allow_private: bool = False
    fetch_timeout_seconds: float = Field(10.0, gt=0)


class ReportersConfig(_Model):
    # A reporter may dispute a result this many days after it (Art. 7.4); the case reopens at the same agency.
    dispute_days: float = Field(7.0, gt=0)
    # A message from the same reporter on the same channel this many hours after their report, while it is
    # open, joins that report's timeline instead of opening a new report.
    follow_up_hours: float = Field(48.0, ge=0)


class DispatchConfig(_Model):
    agencies: dict[str, AgencyDispatch] = {}
    email_answers: EmailAnswersConfig = EmailAnswersConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    smtp: SmtpConfig = SmtpConfig()
    sms: SmsGatewayConfig = SmsGatewayConfig()
    clocks: ClockConfig = ClockConfig()
    notify: NotifyConfig = NotifyConfig()
    evidence: EvidenceConfig = EvidenceConfig()
    reporters: ReportersConfig = ReportersConfig()
    # Serve the public `/cases/<token>` lookup page and rating form (off if another component serves it).
    serve_lookup_page: bool = True


_last: tuple[Any, Any, DispatchConfig] | None = None  # (settings, its section, the typed section) of the last call


def dispatch_settings(settings: Any) -> DispatchConfig:
    """The typed `[dispatch]` section of loaded Settings (already validated at load time).

    Validating it again costs ~0.2 ms (a deep copy of every agency's targets), and the classify stage asks for it
    for every report: the last one is kept while the same Settings and the same section are asked for (a reload
    brings new Settings). Callers read it, never change it."""
    global _last
    section = getattr(settings, "dispatch", {}) or {}
    last = _last
    if last is not None and last[0] is settings and last[1] is section:
        return last[2]
    typed = DispatchConfig.model_validate(section)
    _last = (settings, section, typed)
    return typed


EXTRA_SECTIONS["dispatch"] = DispatchConfig
