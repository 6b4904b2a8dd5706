"""Config models of each channel kind, and the registry `kind -> model` used to validate `[[channels]]`.

Adding a channel instance is a config edit; adding a channel kind is one model here plus one factory in
channels/registry.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr


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


CHANNEL_MODELS: dict[str, type[ChannelOptions]] = {
    "open311": Open311Options,
    "transcripts": TranscriptOptions,
}
