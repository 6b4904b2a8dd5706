"""The request bodies the dispatch API accepts, as pydantic models.

They live apart from the routes (dispatch/api.py) so the OpenAPI document (dispatch/openapi.py) can describe them
without importing the routes that serve it.
"""
from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

MAX_PHOTOS = 10


class Photo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    content_type: str = Field(pattern=r"^image/[a-z0-9.+-]+$")
    # Standard base64 (with padding): described in the OpenAPI document, so a client knows before it sends.
    data: str = Field(pattern=r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
                      json_schema_extra={"contentEncoding": "base64"})
    filename: str | None = None


class AnswerBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    note: str | None = Field(None, max_length=8000)
    reason: str | None = Field(None, max_length=4000)
    expected_completion: datetime | None = None
    several_agencies: bool = False
    field_check: bool = False
    complex: bool = False  # with `verified`: a complex incident (7.1b: safety measures in 2 h, 8 h to fix)
    agency: str | None = None  # reassigned (operator unit and City Office only): the lead agency
    supporting: list[str] = Field(default_factory=list, max_length=10)  # with reassigned: supporting agencies
    photos: list[Photo] = Field(default_factory=list, max_length=MAX_PHOTOS)
    # Photos the agency publishes elsewhere: fetched through the SSRF guard (dispatch/evidence.py).
    photo_urls: list[Annotated[str, Field(pattern=r"^https?://[^\s/]+(/\S*)?$", max_length=2000)]] = Field(
        default_factory=list, max_length=MAX_PHOTOS)


class DisputeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=4000)


class RatingBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    score: int = Field(ge=1, le=5)
    comment: str | None = Field(None, max_length=2000)
