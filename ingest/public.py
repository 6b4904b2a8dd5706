"""What the public may see of a report (Art. 8.2, 9): handling status and redacted content, never the reporter.

Pure functions over a `reports` row (optionally joined with its case: the row comes from dispatch's
`dispatch.queries.PUBLIC_SELECT`, since the base names no stage's table); used by the Open311 read API
(console/public.py) and the public pages (portal/). Reports are public by default, except those under
confidentiality (Art. 9): a confidential report shows its topic, place and handling steps but no content and
no coordinates, since both can identify the reporter.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from config.directory import Directory

from . import vocabulary
from .clock import iso
from .pii import REDACTED, is_confidential, redact_message
from .records import InboundMessage, from_json

CLOSED_STATES = {"closed", "rejected", "out_of_scope"}
# Reports in these states are never published: loops and auto-replies, abusive content, our own failures.
# A follow-up message lives on its earlier report's timeline (ingest/followup.py), not as a report of its own.
HIDDEN_STATES = {"ignored", "rejected", "failed", "follow_up"}
__all__ = ["REDACTED", "public_request", "redact_text", "services"]
CONFIDENTIAL_NOTE = vocabulary.CONFIDENTIAL_NOTE["vi"]
PENDING_NOTE = vocabulary.PENDING_NOTE["vi"]
OUT_OF_SCOPE_NOTE = vocabulary.OUT_OF_SCOPE_NOTE["vi"]

# Report status / case state -> what the public reads (status_notes); the case's state, once there is a case,
# is more precise than the report's status. Texts: ingest/vocabulary.py.
UNDECIDED_STATUSES = ("received", "review")
STATUS_VI = {status: texts["vi"] for status, texts in vocabulary.REPORT_STATUS_TEXTS.items()}
CASE_STATE_VI = {state: texts["vi"] for state, texts in vocabulary.CASE_STATE_TEXTS.items()}


# Where the public pages serve a report's published photos (re-encoded, without EXIF; portal/views.py).
PUBLIC_PHOTO_PATH = "/public/{id}/photos/{sha}"


def services(directory: Directory) -> list[dict[str, Any]]:
    """GeoReport v2 service list: the topics one can report (refused categories are not services)."""
    return [{"service_code": t.id, "service_name": t.name_vi, "description": t.description_vi,
             "metadata": False, "type": "realtime", "keywords": t.id.replace("_", ","), "group": t.category}
            for t in directory.topics.values() if t.agency is not None]


def public_photos(row: Any) -> list[str]:
    """The photos of a report the public may see: the agency's after-photos on its case (sha256 ids, in answer
    order), none for a confidential report (a photo can show where the reporter lives). Reporters' own photos
    are never published: they may show faces and homes."""
    raw = _get(row, "answer_data")
    if not raw or is_confidential(from_json(InboundMessage, row["record"])):
        return []
    out: list[str] = []
    try:
        answers = json.loads(raw)
    except ValueError:
        return []
    for data in answers:
        try:
            photos = json.loads(data or "{}").get("photos") or []
        except (ValueError, AttributeError):
            continue
        out += [p for p in photos if isinstance(p, str) and len(p) == 64 and p not in out
                and all(c in "0123456789abcdef" for c in p)]
    return out


def redact_text(message: InboundMessage) -> str:
    """The report text as the public may read it (ingest/pii.py, the one redactor)."""
    return redact_message(message)


def _get(row: Any, key: str) -> Any:
    if isinstance(row, Mapping):
        return row.get(key)
    return row[key] if key in row.keys() else None


def public_address(classification: str | dict[str, Any] | None, directory: Directory) -> str | None:
    """Street, ward and district the classifier found in the text or from GPS; never a house number, and
    nothing taken from the reporter's own address."""
    if not classification:
        return None
    try:
        cls = json.loads(classification) if isinstance(classification, str) else classification
    except ValueError:
        return None
    place = cls.get("place") or {}
    if place.get("source") == "reporter_address":
        return None
    if place.get("unit_label"):
        # The 2025 map: the new unit with the old ward and district people know beside it.
        return ", ".join(str(p) for p in (place.get("landmark"), place.get("street"), place["unit_label"]) if p)
    district = directory.districts.get(place.get("district") or "")
    parts = [str(p) for p in (place.get("landmark"), place.get("street"), place.get("ward")) if p]
    if district:
        parts.append(district.name_vi)
    return ", ".join(parts) or None


def public_request(row: Any, directory: Directory, base_url: str = "") -> dict[str, Any]:
    """One report in Open311 GeoReport v2 `service_request` shape, with no personal data: the one renderer of
    the JSON and XML answers.

    `row` is a `reports` row with id, status, topic, agency, received_at, updated_at, record; when it also
    carries `classification`, `case_agency`, `case_state`, `expected_completion` and `answer_data`
    (dispatch.queries.PUBLIC_SELECT), those make the answer more precise. `media_url`: the first published photo, under
    `base_url` (the public base URL).
    """
    message = from_json(InboundMessage, row["record"])
    status = row["status"]
    confidential = is_confidential(message)  # the app's flag or a request written in the text, any channel
    case_state = _get(row, "case_state")
    # Before an operator or the classifier has decided (received, review), the classifier's guess is no answer to
    # publish: a report held for review was listed publicly as "abusive" with a guessed agency. Shown then: the
    # topic the reporter chose, if any, and no agency.
    undecided = status in UNDECIDED_STATUSES and not case_state
    agency = None if undecided else directory.agencies.get(_get(row, "case_agency") or row["agency"] or "")
    topic = directory.topics.get((message.service_code if undecided else row["topic"] or message.service_code) or "")
    if confidential:
        description = CONFIDENTIAL_NOTE
    elif status == "review":
        # The classifier was unsure: abusive content waits here too, and must not be published (Art. 3.6) before
        # an operator decides. (`received` lasts the seconds before classification; the app shows the reporter
        # their own text then.)
        description = PENDING_NOTE
    elif status == "out_of_scope":
        # Complaints and denunciations name third parties; the public learns only that it was not ours.
        description = OUT_OF_SCOPE_NOTE
    else:
        description = redact_text(message)
    # The app's GPS may be the reporter's home: published rounded to about 100 m, and never when confidential.
    lat = round(message.lat, 3) if message.lat is not None and not confidential else None
    lon = round(message.lon, 3) if message.lon is not None and not confidential else None
    expected = _get(row, "expected_completion")
    return {
        "service_request_id": str(row["id"]),
        "status": "closed" if status in CLOSED_STATES else "open",
        "status_notes": CASE_STATE_VI.get(case_state or "") or STATUS_VI.get(status, vocabulary.UNKNOWN_STATE_TEXT["vi"]),
        "service_name": topic.name_vi if topic else None,
        "service_code": topic.id if topic else None,
        "description": description,
        "agency_responsible": agency.name_vi if agency else None,
        "service_notice": None,
        "requested_datetime": iso(row["received_at"]),
        "updated_datetime": iso(row["updated_at"]),
        "expected_datetime": iso(expected) if expected else None,
        "address": None if confidential else public_address(_get(row, "classification"), directory),
        "address_id": None,
        "zipcode": None,
        "lat": lat,
        "long": lon,
        "media_url": (base_url.rstrip("/") + PUBLIC_PHOTO_PATH.format(id=row["id"], sha=photos[0])
                      if (photos := public_photos(row)) else None),
    }
