"""The handling steps of a report that anyone may see, in the reader's language: kind and time, and agency names;
never notes, actors or free text (Art. 8.2, 9)."""
from __future__ import annotations

import json
from typing import Any

from config.directory import Directory
from ingest.clock import iso
from ingest.store import Store

from .catalogue import TEXTS, text


def agency_name(directory: Directory, agency_id: Any, lang: str) -> str:
    agency = directory.agencies.get(str(agency_id or ""))
    if agency is None:
        return text(lang, "agency_generic")
    return agency.name_en if lang == "en" and agency.name_en else agency.name_vi


def state_text(lang: str, state: str | None) -> str:
    key = f"state.{state}"
    return text(lang, key if key in TEXTS else "state.unknown")


async def public_steps(store: Store, directory: Directory, row: Any, lang: str) -> list[dict[str, str]]:
    """`row` is a console.public SELECT row (a report with its incident's case, if any)."""
    steps = [{"at": iso(row["received_at"]), "what": text(lang, "step.received")}]
    report_ids = sorted({int(row["id"]), *([int(row["case_report_id"])] if row["case_report_id"] else [])})
    events = await store.fetchall(
        f"SELECT report_id, kind, at, data FROM events WHERE report_id IN ({','.join('?' * len(report_ids))})"
        " ORDER BY at, id", report_ids)
    for e in events:
        try:
            data = json.loads(e["data"] or "{}")
        except ValueError:
            data = {}
        kind, own = e["kind"], e["report_id"] == row["id"]
        what = None
        if kind == "case_created":
            what = text(lang, "step.forwarded", agency=agency_name(directory, data.get("agency"), lang))
        elif kind == "agency_answer":
            key = f"answer.{data.get('kind')}"
            what = text(lang, key if key in TEXTS else "step.answer")
        elif kind == "case_rerouted":
            what = text(lang, "step.rerouted", agency=agency_name(directory, data.get("to"), lang))
        elif kind == "case_closed":
            what = text(lang, "step.closed", state=state_text(lang, str(data.get("state"))))
        elif kind == "deadline_escalation":
            what = text(lang, "step.escalated", agency=agency_name(directory, data.get("agency"), lang))
        elif kind == "reporter_notified" and own:
            what = text(lang, "step.notified")
        elif kind in ("incident_merge", "incident") and own and row["case_id"] and row["case_report_id"] != row["id"]:
            what = text(lang, "step.merged")
        if what:
            steps.append({"at": iso(e["at"]), "what": what})
    return steps
