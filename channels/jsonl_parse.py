"""Pure conversion of a labelled-report JSON line (the shape of the dev set) into a record, for `route`/`eval`."""
from __future__ import annotations

import hashlib
import unicodedata
import json
from typing import Any

from ingest.records import InboundMessage, Reporter
from ingest.text import normalize


def parse_line(data: dict[str, Any], channel_instance: str = "batch") -> InboundMessage:
    """`expected`, if present, is ignored: routing must not see the answer."""
    reporter = data.get("reporter") or {}
    report_id = str(data.get("id") or hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16])
    return InboundMessage(
        channel=str(data.get("channel") or "app"),
        channel_instance=channel_instance,
        idempotency_key=f"batch:{report_id}",
        received_at=str(data["received_at"]),
        text=normalize(str(data.get("text") or "")),
        subject=normalize(str(data["subject"])) if data.get("subject") else None,
        reporter=Reporter(
            name=reporter.get("name"), phone=reporter.get("phone"), email=reporter.get("email"),
            address=reporter.get("address"), confidential=_confidential(reporter.get("confidential", False)),
        ),
        lat=data.get("lat"),
        lon=data.get("lon"),
        external_id=report_id,
    )


_NO = frozenset(("", "0", "false", "no", "n", "off", "none", "không", "khong"))


def _confidential(value: Any) -> bool:
    """A JSON true/false, or the word a hand-written line gives ("false" was read as True by `bool`); a word that
    is no clear "no" keeps the report private."""
    if isinstance(value, str):
        return unicodedata.normalize("NFC", value).strip().lower() not in _NO
    return bool(value)
