"""The `[console]` config section: operator console sessions, cookies and login throttling.

Validated by `config.loader` through EXTRA_SECTIONS; console/service.py calls `console_settings(settings)`.
Who may see a confidential reporter's details among agencies is the dispatch section's
`[dispatch.agencies.<id>] receives_confidential`, one rule for the webhook payload and the console alike.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .loader import EXTRA_SECTIONS


class ConsoleConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    session_hours: float = Field(12.0, gt=0, le=24 * 30)
    # Cookies carry `Secure` (never sent in clear) when this is true OR http.public_base_url is https.
    secure_cookie: bool = False
    # Login throttling per (username, client address): after this many failures, each further failure makes that
    # pair wait twice as long as the last (from login_backoff_seconds up to login_backoff_cap_seconds). Another
    # client is not affected, so nobody can lock a known user out from elsewhere.
    login_max_failures: int = Field(5, ge=1)
    login_backoff_seconds: float = Field(2.0, gt=0)
    login_backoff_cap_seconds: float = Field(900.0, gt=0)
    # A pair's failures are forgotten after this long without one.
    login_window_seconds: float = Field(900.0, gt=0)
    page_size: int = Field(50, ge=5, le=500)


def console_settings(settings: Any) -> ConsoleConfig:
    """The typed `[console]` section of loaded Settings (already validated at load time)."""
    return ConsoleConfig.model_validate(getattr(settings, "console", {}) or {})


EXTRA_SECTIONS["console"] = ConsoleConfig
