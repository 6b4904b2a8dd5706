"""What the public may see of a report (Art. 8.2, 9): handling status and redacted content, never the reporter.

Pure functions over a `reports` row; used by the Open311 read API and the public page.
"""
from __future__ import annotations

import re
from typing import Any

from config.directory import Directory

from .clock import iso
from .contacts import redact
from .records import InboundMessage, from_json

CLOSED_STATES = {"closed", "rejected", "out_of_scope"}
# Reports in these states are never published: loops and auto-replies, abusive content, our own failures.
HIDDEN_STATES = {"ignored", "rejected", "failed"}


def redact_text(message: InboundMessage) -> str:
    """The report text with contacts removed, and the reporter's own name and address where they repeat it."""
    text = redact(message.text)
    for value in (message.reporter.name, message.reporter.address):
        if value and len(value.strip()) >= 3:
            text = re.sub(re.escape(value.strip()), "[ẩn]", text, flags=re.IGNORECASE)
    return text


def public_request(row: Any, directory: Directory) -> dict[str, Any]:
    """One report in Open311 GeoReport v2 `service_request` shape, with no personal data."""
    message = from_json(InboundMessage, row["record"])
    agency = directory.agencies.get(row["agency"] or "")
    topic = directory.topics.get(row["topic"] or message.service_code or "")
    # The app's GPS may be the reporter's home: publish it rounded to about 100 m.
    lat = round(message.lat, 3) if message.lat is not None else None
    lon = round(message.lon, 3) if message.lon is not None else None
    return {
        "service_request_id": str(row["id"]),
        "status": "closed" if row["status"] in CLOSED_STATES else "open",
        "status_notes": row["status"],
        "service_name": topic.description_vi.split(":")[0] if topic else None,
        "service_code": topic.id if topic else None,
        "description": redact_text(message),
        "agency_responsible": agency.name_vi if agency else None,
        "service_notice": None,
        "requested_datetime": iso(row["received_at"]),
        "updated_datetime": iso(row["updated_at"]),
        "expected_datetime": None,
        "address": None,
        "address_id": None,
        "zipcode": None,
        "lat": lat,
        "long": lon,
        "media_url": None,
    }
