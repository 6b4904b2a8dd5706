"""The `[ops]` config section: weekly/quarterly report delivery to agency leadership, metrics and readiness knobs.

Validated by `config.loader` through EXTRA_SECTIONS; the ops package calls `ops_settings(settings)` for the typed
model. Leadership contacts are data an administrator edits (Art. 11.6: agencies notify leadership changes).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from .dispatch import SmtpConfig
from .loader import EXTRA_SECTIONS


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OpsAgency(_Model):
    # Art. 10.2: the weekly report goes to the agency's leadership by email and/or SMS.
    leadership_email: list[str] = []
    leadership_phone: list[str] = []

    @field_validator("leadership_email")
    @classmethod
    def _emails(cls, value: list[str]) -> list[str]:
        for address in value:
            local, _, domain = address.partition("@")
            if not local or "." not in domain or any(c.isspace() for c in address):
                raise ValueError(f"{address!r} is not an email address")
        return value

    @field_validator("leadership_phone")
    @classmethod
    def _phones(cls, value: list[str]) -> list[str]:
        for phone in value:
            digits = phone.removeprefix("+")
            if not digits.isdigit() or not 9 <= len(digits) <= 15:
                raise ValueError(f"{phone!r} is not a phone number (digits, optional leading +)")
        return value


class OpsConfig(_Model):
    # Send each agency its weekly report once the week (Monday 00:00 to Monday 00:00, Vietnam time) is over.
    weekly_send: bool = False
    # Hour of Monday (Vietnam time) from which last week's reports are sent; a daemon that was down catches up.
    weekly_send_hour: int = Field(7, ge=0, le=23)
    # Also send the quarterly ranking to the agencies listed in `quarterly_recipients` (e.g. vp-ubnd).
    quarterly_send: bool = False
    quarterly_recipients: list[str] = ["vp-ubnd"]
    agencies: dict[str, OpsAgency] = {}
    # None: use [dispatch.smtp] (same relay, same From).
    smtp: SmtpConfig | None = None
    # How often the sender looks for a report that is due, and how many times a failing send is retried.
    check_interval_seconds: float = Field(300.0, gt=0)
    max_send_attempts: int = Field(12, ge=1)
    # Store queries behind /metrics are cached this long, so a burst of scrapes costs one query set.
    metrics_cache_seconds: float = Field(5.0, ge=0)
    # /readyz answers 503 when the store's write lock cannot be taken within this time.
    ready_timeout_seconds: float = Field(2.0, gt=0)
    # Who may read /metrics. A token: scrapers send `Authorization: Bearer <token>` (use "env:NAME" or a file).
    # A listener ("127.0.0.1:9022"): /metrics moves off the public port to its own one. With neither, /metrics
    # is served on the main port only while [http] host is a loopback address.
    metrics_token: SecretStr | None = None
    metrics_listen: str | None = None

    @field_validator("metrics_listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT")
        return value

    def metrics_address(self) -> tuple[str, int] | None:
        if self.metrics_listen is None:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)


def ops_settings(settings: Any) -> OpsConfig:
    """The typed `[ops]` section of loaded Settings (already validated at load time)."""
    return OpsConfig.model_validate(getattr(settings, "ops", {}) or {})


EXTRA_SECTIONS["ops"] = OpsConfig
