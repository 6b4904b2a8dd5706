"""The portal's catalogue covers every state and answer the pipeline can show, in both languages; the pure parts:
rate limiter, CSRF tokens, metadata stripping, address suggestions."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from config.directory import load_directory
from dispatch.policy import ANSWER_KINDS
from ingest.public import CASE_STATE_VI, STATUS_VI
from portal import abuse
from portal.catalogue import LANGUAGES, TEXTS, text
from portal.photos import NotAnImage, strip_metadata
from portal.places import build_places, suggest

from .conftest import has_metadata, photo_with_gps


def test_every_state_and_answer_has_a_text_in_each_language() -> None:
    for state in (*STATUS_VI, *CASE_STATE_VI):
        assert f"state.{state}" in TEXTS, state
    for kind in ANSWER_KINDS:
        assert f"answer.{kind}" in TEXTS, kind
    for key, entry in TEXTS.items():
        assert set(entry) == set(LANGUAGES), key
    assert text("en", "receipt_number", id=7) == "Your report number: 7"


def test_rate_limiter_allows_a_burst_then_one_per_interval() -> None:
    limiter = abuse.RateLimiter(burst=3, per_minute=2.0)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(30.0)
    assert limiter.take("b", 0.0) == 0.0  # another client has its own bucket
    assert limiter.take("a", 29.0) == pytest.approx(1.0)
    assert limiter.take("a", 30.0) == 0.0
    small = abuse.RateLimiter(burst=1, per_minute=1.0, max_clients=2)
    for client in ("x", "y", "z"):
        small.take(client, 0.0)
    assert len(small._buckets) == 2


def test_csrf_token_is_bound_to_the_browser_and_the_key() -> None:
    key, other = b"k" * 32, b"o" * 32
    secret = abuse.new_browser_secret()
    token = abuse.csrf_token(key, secret)
    assert abuse.csrf_ok(key, secret, token)
    assert not abuse.csrf_ok(other, secret, token)
    assert not abuse.csrf_ok(key, abuse.new_browser_secret(), token)
    assert not abuse.csrf_ok(key, None, token) and not abuse.csrf_ok(key, secret, "")


def test_strip_metadata_keeps_the_picture_upright_and_drops_everything_else() -> None:
    original = photo_with_gps(2400, 1200)
    assert has_metadata(original)
    clean = strip_metadata(original)
    assert not has_metadata(clean)
    with Image.open(io.BytesIO(clean)) as img:
        assert img.size == (1600, 800)
    # A portrait photo stored sideways with an orientation tag comes out upright.
    sideways = Image.new("RGB", (400, 200), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    sideways.save(buf, format="JPEG", exif=exif)
    with Image.open(io.BytesIO(strip_metadata(buf.getvalue()))) as img:
        assert img.size == (200, 400) and not img.getexif()
    with pytest.raises(NotAnImage):
        strip_metadata(b"<svg onload=alert(1)>")


def test_address_suggestions_ignore_diacritics_and_find_short_district_names() -> None:
    places = build_places(load_directory())
    assert suggest(places, "ben nghe")[0].label == "Phường Bến Nghé, Quận 1"
    assert suggest(places, "Bến Nghé")[0].label == "Phường Bến Nghé, Quận 1"
    assert "Lê Lợi, Quận 1" in [p.label for p in suggest(places, "le loi q1")]
    assert suggest(places, "q1")[0].label == "Quận 1"
    assert "Chợ Bến Thành, Quận 1" in [p.label for p in suggest(places, "cho ben thanh")]
    assert suggest(places, "x") == [] and suggest(places, "zzzz qqqq") == []
    assert len(suggest(places, "phuong")) == 8
