"""The `[portal]` config section: the citizen web portal at `/` (report form, receipt, lookup, public pages).

Validated by `config.loader` through EXTRA_SECTIONS; portal/service.py calls `portal_settings(settings)`.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .loader import EXTRA_SECTIONS


class PortalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    # Map tiles: any XYZ tile server (an own one, or a provider whose terms allow it). Empty: no map, the form
    # still works with the address box and the "use my location" button.
    tile_url: str = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    tile_attribution: str = "© OpenStreetMap"
    map_center: tuple[float, float] = (10.776, 106.700)  # Ho Chi Minh City centre (District 1)
    map_zoom: int = Field(13, ge=1, le=19)
    max_photos: int = Field(5, ge=0, le=10)
    max_photo_bytes: int = Field(8 * 1024 * 1024, gt=0)  # each photo as received (the browser resizes when it can)
    # Form posts (reports, ratings) per client address: a burst, then one every 60/per_minute seconds.
    rate_burst: int = Field(5, ge=1)
    rate_per_minute: float = Field(2.0, gt=0)
    # Behind a reverse proxy that sets X-Forwarded-For, count clients by its first address instead of the peer.
    trust_forwarded_for: bool = False
    secure_cookie: bool = False  # also on whenever http.public_base_url is https
    page_size: int = Field(30, ge=5, le=200)


def portal_settings(settings: Any) -> PortalConfig:
    """The typed `[portal]` section of loaded Settings (already validated at load time)."""
    return PortalConfig.model_validate(getattr(settings, "portal", {}) or {})


EXTRA_SECTIONS["portal"] = PortalConfig
