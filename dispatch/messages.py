"""Texts: what reporters read (Vietnamese, or English when they wrote in English) and what agencies receive.

Pure rendering; no personal data of a confidential reporter is put into an agency rendering unless the
caller passes it (dispatch/cases.py decides that from config, Art. 9).
"""
from __future__ import annotations

import html
from typing import Any

from ingest.clock import iso
from ingest.vocabulary import (AGENCY_TEXTS, ALERT_LEVEL_TEXTS, ANSWER_HELP_VI, CASE_REFERENCE, CLOCK_TEXTS,
                               CLOSED_AS_TEXTS, DEFAULT_REASON, DISPUTE_HINT, RECURRENCE_TEXT, REPORTER_TEMPLATES,
                               UNIT_COMMITTEE)

# What in a reporter's reply after a result says it is not fixed (folded: no diacritics, lower case).
DISPUTE_PHRASES = ("chua xu ly", "chua duoc xu ly", "chua khac phuc", "van con", "van chua", "van bi", "chua sua",
                   "khong dong y", "khong dung su that", "khong hai long voi ket qua", "van y nguyen", "lai bi",
                   "not fixed", "still broken", "still there", "dispute", "not resolved")


def clock_text(kind: str, language: str = "vi") -> str:
    """A clock as people read it; an unknown kind (a newer one) as its name."""
    return CLOCK_TEXTS[kind][language] if kind in CLOCK_TEXTS else kind


def _level(level: str) -> str:
    return ALERT_LEVEL_TEXTS[level]["vi"] if level in ALERT_LEVEL_TEXTS else level


def escalation_digest(agency_name: str, level: str, items: list[dict[str, Any]]) -> tuple[str, str]:
    """Subject and text of one digest to an agency's contacts: every clock of theirs at this level."""
    say = {key: texts["vi"] for key, texts in AGENCY_TEXTS.items()}
    fields = {"agency": agency_name, "count": len(items), "level": _level(level)}
    lines = [say["digest_greeting"].format(**fields), "", say["digest_intro"].format(**fields), ""]
    for item in items:
        ref = item.get("case_id") or say["report_number"].format(report_id=item.get("report_id"))
        lines.append(say["digest_line"].format(ref=ref, clock=clock_text(item["kind"]), due=iso(item["due_at"])))
    lines += ["", say["digest_close"]]
    return say["digest_subject"].format(**fields), "\n".join(lines)


def escalation_sms(agency_name: str, level: str, items: list[dict[str, Any]]) -> str:
    refs = ", ".join(str(i.get("case_id") or i.get("report_id")) for i in items[:5])
    more = AGENCY_TEXTS["sms_more"]["vi"].format(count=len(items) - 5) if len(items) > 5 else ""
    return AGENCY_TEXTS["sms"]["vi"].format(agency=agency_name, count=len(items), level=_level(level), refs=refs,
                                            more=more)


def recurrence_text(days: int, closed_as: str, language: str) -> str:
    """"Reported again 3 days after it was closed as resolved", for operators and the agency."""
    lang = "en" if language == "en" else "vi"
    how = CLOSED_AS_TEXTS.get(closed_as, CLOSED_AS_TEXTS["resolved"])[lang]
    return RECURRENCE_TEXT[lang].format(days=days, how=how, day_word="day" if days == 1 else "days")

def unit_committee_name(label: str, language: str) -> str:
    return UNIT_COMMITTEE["en" if language == "en" else "vi"].format(label=label)


def reporter_text(template: str, language: str, **fields: Any) -> str:
    lang = "en" if language == "en" else "vi"
    body = REPORTER_TEMPLATES[template][lang]
    if template in DEFAULT_REASON and not fields.get("reason"):
        fields["reason"] = DEFAULT_REASON[template][lang]
    reason = str(fields.get("reason") or "").strip()
    if template == "out_of_scope" and reason and not reason.endswith((".", "!", "?")):
        reason += "."
    fields["reason"] = reason.rstrip(".") if template == "rejected" else reason
    result = str(fields.get("result") or "").strip()
    if result and not result.endswith((".", "!", "?")):
        result += "."
    fields["result"] = f"{result} " if result else ""
    case_id = fields.get("case_id")
    fields["case_part"] = CASE_REFERENCE[lang].format(case_id=case_id) if case_id else ""
    text = body.format_map({k: ("" if v is None else v) for k, v in fields.items()})
    if template in ("resolved", "closed_false") and fields.get("dispute_days"):
        text += DISPUTE_HINT[lang].format(days=f"{fields['dispute_days']:g}")
    return " ".join(text.split())


def agency_text(payload: dict[str, Any]) -> str:
    d = payload["data"]
    say = {key: texts["vi"] for key, texts in AGENCY_TEXTS.items()}
    district = say["district"].format(district=d.get("district_name") or say["unknown_district"])
    answer = ["", say["answer_at"].format(url=d.get("answer_url")), ANSWER_HELP_VI]
    if payload["type"] == "case.disputed":
        dispute = d.get("dispute") or {}
        previous = dispute.get("previous") or {}
        head = [say["disputed"].format(case_id=d["case_id"], at=dispute.get("at", "")),
                say["dispute_text"].format(text=dispute.get("text", "")),
                say["previous_result"].format(result=previous.get("result") or "—"), "", say["reopened"]]
        head += [f"- {x['kind']}: {x['due_at']}" for x in d.get("deadlines") or []]
        return "\n".join(head + answer)
    if payload["type"] == "case.merged":
        return "\n".join([say["merged"].format(case_id=d["case_id"], into=d.get("merged_into_case")),
                          say["merged_closed"], "", say["topic"].format(topic=d["topic_name"]), district])
    kind = say["kind_rerouted"] if payload["type"] == "case.rerouted" else say["kind_new"]
    lines = [
        say["case_head"].format(case_id=d["case_id"], kind=kind),
        say["topic"].format(topic=d["topic_name"]),
        district,
        say["place"].format(place=_place_line(d.get("place") or {})),
        say["received_at"].format(at=d["received_at"]),
        say["channel"].format(channel=d["channel"]),
        "",
        say["content"],
        d["text"],
        "",
        say["reporter"].format(reporter=_reporter_line(d.get("reporter") or {})),
    ]
    if d.get("return_reason"):
        lines += ["", say["returned_because"].format(reason=d["return_reason"])]
    if d.get("recurrence"):
        r = d["recurrence"]
        lines += ["", say["recurrence"].format(summary=r["summary_vi"], incident_id=r["incident_id"],
                                               case_id=r.get("case_id") or "—")]
    if d.get("deadlines"):
        lines += ["", say["deadlines"]] + [f"- {x['kind']}: {x['due_at']}" for x in d["deadlines"]]
    return "\n".join(lines + answer)


def agency_html(payload: dict[str, Any]) -> str:
    text = agency_text(payload)
    paragraphs = "".join(f"<p>{html.escape(block).replace(chr(10), '<br>')}</p>" for block in text.split("\n\n"))
    return f"<!doctype html><html><body>{paragraphs}</body></html>"


def is_dispute(folded_text: str) -> bool:
    """Whether a reporter's reply (folded) after a result says it is not fixed."""
    return any(p in folded_text for p in DISPUTE_PHRASES)


def agency_subject(payload: dict[str, Any]) -> str:
    d = payload["data"]
    where = f" - {d['district_name']}" if d.get("district_name") else ""
    return f"[1022 #{d['case_id']}] {d['topic_name']}{where}"


def _place_line(place: dict[str, Any]) -> str:
    parts = [place.get("house_number"), place.get("street"), place.get("landmark"), place.get("ward")]
    line = ", ".join(str(p) for p in parts if p)
    if place.get("lat") is not None and place.get("lon") is not None:
        line += f" ({place['lat']:.6f}, {place['lon']:.6f})"
    return line or AGENCY_TEXTS["unknown_place"]["vi"]


def _reporter_line(reporter: dict[str, Any]) -> str:
    if reporter.get("confidential"):
        return AGENCY_TEXTS["confidential_reporter"]["vi"]
    parts = [reporter.get("name"), reporter.get("phone"), reporter.get("email"), reporter.get("address")]
    return ", ".join(str(p) for p in parts if p) or AGENCY_TEXTS["anonymous_reporter"]["vi"]


def when(ts: float | None) -> str | None:
    return None if ts is None else iso(ts)
