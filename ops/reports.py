"""The figures of the weekly and quarterly reports (Art. 10.2, 11.4, 14.2), read from the store.

Definitions, per agency and period [start, end) in Vietnam time:
- reports: citizen reports routed to the agency (several reports of one incident count each);
- received: cases that reached the agency (first forwarding or a re-route to it);
- handled: cases the agency acted on (any answer but "returned": acknowledged, verified, in progress, ...);
- answered: cases the agency closed with a result for the reporter (resolved, or checked and found false);
- returned: cases the agency sent back as not its own (misrouted);
- deadlines, per kind: on time when met inside the period; late when due inside the period and missed, met late,
  or still open past due (the 5-minute forwarding clock is the portal's, counted for the operator unit).
  Cancelled clocks (the case closed or moved first) count neither way;
- ratings: satisfaction scores (1-5) given inside the period on cases the agency holds.

Without the dispatch tables (dispatch not installed) only `reports` is filled, from the reports table.
Quarterly: the same figures over the quarter, ranked by a score (see `rank`), and the suggestions received.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from config.directory import OPERATOR_UNIT
from dispatch import queries as dispatch_queries
from ingest.clock import VN_TZ
from ingest.store import Store

DEADLINE_KINDS = ("forward", "acknowledge", "operator_guidance", "duplicate_notice", "review", "subordinate_forward",
                  "site_check", "safety_measures", "fix", "close_false", "answer", "completion", "return_misroute")
CLOSING_ANSWERS = ("resolved", "false_report")
# Reports that never became work for an agency.
NOT_ROUTED = ("received", "review", "rejected", "out_of_scope", "ignored", "failed")
SUGGESTION_TOPIC = "suggestion"
EXCERPT_CHARS = 300


@dataclass(frozen=True, slots=True, kw_only=True)
class Period:
    kind: str  # "weekly" | "quarterly"
    first_day: date
    end_day: date  # exclusive

    @property
    def start(self) -> float:
        return _midnight(self.first_day)

    @property
    def end(self) -> float:
        return _midnight(self.end_day)

    @property
    def last_day(self) -> date:
        return self.end_day - timedelta(days=1)

    @property
    def key(self) -> str:
        return self.first_day.isoformat()

    @property
    def label(self) -> str:
        if self.kind == "quarterly" and self.first_day.day == 1 and self.first_day.month in (1, 4, 7, 10):
            return f"Q{(self.first_day.month - 1) // 3 + 1}/{self.first_day.year}"
        return f"{self.first_day:%d/%m/%Y} - {self.last_day:%d/%m/%Y}"


def _midnight(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=VN_TZ).timestamp()


def local_date(ts: float) -> date:
    return datetime.fromtimestamp(ts, VN_TZ).date()


def week_from(first_day: date) -> Period:
    return Period(kind="weekly", first_day=first_day, end_day=first_day + timedelta(days=7))


def last_complete_week(now: float) -> Period:
    """Monday to Sunday before the week `now` falls in."""
    today = local_date(now)
    this_monday = today - timedelta(days=today.weekday())
    return week_from(this_monday - timedelta(days=7))


def quarter_from(first_day: date) -> Period:
    month = first_day.month - 1 + 3
    end = date(first_day.year + month // 12, month % 12 + 1, 1)
    if first_day.day != 1:  # an unaligned start: three calendar months later, same day (clamped to the month)
        try:
            end = end.replace(day=first_day.day)
        except ValueError:
            end = date(end.year + end.month // 12, end.month % 12 + 1, 1)
    return Period(kind="quarterly", first_day=first_day, end_day=end)


def last_complete_quarter(now: float) -> Period:
    today = local_date(now)
    this_quarter = date(today.year, (today.month - 1) // 3 * 3 + 1, 1)
    month = this_quarter.month - 3
    first = date(this_quarter.year - (1 if month < 1 else 0), month + 12 if month < 1 else month, 1)
    return quarter_from(first)


@dataclass(slots=True)
class DeadlineTally:
    on_time: int = 0
    late: int = 0


@dataclass(slots=True, kw_only=True)
class AgencyFigures:
    agency: str
    name: str
    reports: int = 0
    received: int = 0
    handled: int = 0
    answered: int = 0
    returned: int = 0
    deadlines: dict[str, DeadlineTally] = field(default_factory=dict)
    ratings: list[int] = field(default_factory=lambda: [0, 0, 0, 0, 0])  # counts of scores 1..5

    @property
    def on_time(self) -> int:
        return sum(t.on_time for t in self.deadlines.values())

    @property
    def late(self) -> int:
        return sum(t.late for t in self.deadlines.values())

    @property
    def rating_count(self) -> int:
        return sum(self.ratings)

    @property
    def rating_mean(self) -> float | None:
        n = self.rating_count
        return sum((i + 1) * c for i, c in enumerate(self.ratings)) / n if n else None

    @property
    def on_time_rate(self) -> float | None:
        total = self.on_time + self.late
        return self.on_time / total if total else None

    @property
    def active(self) -> bool:
        return bool(self.reports or self.received or self.handled or self.answered or self.returned
                    or self.on_time or self.late or self.rating_count)

    def tally(self, kind: str) -> DeadlineTally:
        return self.deadlines.setdefault(kind, DeadlineTally())


async def _tables(store: Store) -> set[str]:
    return await store.table_names()


async def agency_figures(store: Store, period: Period, names: dict[str, str],
                         now: float | None = None) -> dict[str, AgencyFigures]:
    """Figures of every agency in `names` (id -> display name) plus any other agency seen in the period."""
    now = store.clock.now() if now is None else now
    start, end = period.start, period.end
    figures = {a: AgencyFigures(agency=a, name=n) for a, n in names.items()}

    def fig(agency: str) -> AgencyFigures:
        if agency not in figures:
            figures[agency] = AgencyFigures(agency=agency, name=names.get(agency, agency))
        return figures[agency]

    marks = ",".join("?" * len(NOT_ROUTED))
    for row in await store.fetchall(
            f"SELECT agency, COUNT(*) AS n FROM reports WHERE agency IS NOT NULL AND status NOT IN ({marks})"
            " AND received_at>=? AND received_at<? GROUP BY agency", (*NOT_ROUTED, start, end)):
        fig(row["agency"]).reports = row["n"]

    tables = await _tables(store)
    if not {"cases", "answers", "deadlines", "ratings"} <= tables:
        return figures

    received: dict[str, set[str]] = {}
    for row in await dispatch_queries.cases_received(store, start, end):
        received.setdefault(row["agency"], set()).add(row["case_id"])
    for agency, cases in received.items():
        fig(agency).received = len(cases)

    for row in await dispatch_queries.answer_counts(store, start, end, CLOSING_ANSWERS):
        f = fig(row["agency"])
        f.handled, f.answered, f.returned = row["handled"], row["answered"], row["returned"]

    # Each clock counts once: a met one in the period it was met, a late one in the period it fell due.
    for row in await dispatch_queries.deadline_tallies(store, start, end, now):
        if row["on_time"] or row["late"]:
            # The 5-minute forwarding clock is the portal's own (Art. 6), not the receiving agency's.
            owner = OPERATOR_UNIT if row["kind"] == "forward" else row["agency"]
            tally = fig(owner).tally(row["kind"])
            tally.on_time += int(row["on_time"] or 0)
            tally.late += int(row["late"] or 0)

    for row in await dispatch_queries.rating_counts(store, start, end):
        if 1 <= row["score"] <= 5:
            fig(row["agency"]).ratings[row["score"] - 1] = row["n"]
    return figures


def deadline_kinds(figures: list[AgencyFigures]) -> list[str]:
    """The known kinds in the regulation's order, then any other kind seen (so no figure is dropped)."""
    seen = {k for f in figures for k in f.deadlines}
    return [*DEADLINE_KINDS, *sorted(seen - set(DEADLINE_KINDS))]


# -- quarterly ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True, kw_only=True)
class Ranked:
    rank: int | None  # None: no case in the period, not ranked
    figures: AgencyFigures
    score: float | None
    answer_rate: float | None


# Weights of the ranking score: deadlines kept, cases closed with a result, reporters' satisfaction.
SCORE_WEIGHTS = {"on_time": 0.6, "answered": 0.25, "satisfaction": 0.15}


def score(f: AgencyFigures) -> tuple[float | None, float | None]:
    """(score 0-100, answer rate). A missing component (no clock, no rating) is left out and the others reweighed."""
    answer_rate = min(1.0, f.answered / f.received) if f.received else None
    parts = {
        "on_time": f.on_time_rate,
        "answered": answer_rate,
        "satisfaction": (f.rating_mean - 1) / 4 if f.rating_mean is not None else None,
    }
    present = {k: v for k, v in parts.items() if v is not None}
    if not present:
        return None, answer_rate
    weight = sum(SCORE_WEIGHTS[k] for k in present)
    return 100 * sum(SCORE_WEIGHTS[k] * v for k, v in present.items()) / weight, answer_rate


def rank(figures: list[AgencyFigures]) -> list[Ranked]:
    scored = [(f, *score(f)) for f in figures]
    ranked = sorted((s for s in scored if s[1] is not None),
                    key=lambda s: (-round(s[1] or 0.0, 1), -(s[0].on_time_rate or 0.0), -s[0].received, s[0].agency))
    # Competition ranking on the score as published (one decimal): equal scores share a rank ("1, 2, 2, 4").
    shown = [round(sc or 0.0, 1) for _, sc, _ in ranked]
    out = [Ranked(rank=1 + sum(1 for other in shown if other > shown[i]), figures=f, score=sc, answer_rate=ar)
           for i, (f, sc, ar) in enumerate(ranked)]
    out.extend(Ranked(rank=None, figures=f, score=None, answer_rate=ar)
               for f, sc, ar in sorted(scored, key=lambda s: s[0].agency) if sc is None)
    return out


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    report_id: int
    received_at: float
    channel: str
    district: str | None
    agency: str | None
    status: str
    incident_id: str | None
    case_id: str | None
    case_state: str | None
    excerpt: str


async def suggestions(store: Store, period: Period, agency: str | None = None) -> list[Suggestion]:
    """Suggestions (Art. 7.3, topic `suggestion`) received in the period; no reporter details (Art. 9)."""
    sql = ("SELECT r.id, r.received_at, r.channel, r.district, r.agency, r.status, r.incident_id, r.record"
           " FROM reports r WHERE r.topic=? AND r.received_at>=? AND r.received_at<?"
           " AND r.status NOT IN ('rejected', 'out_of_scope', 'ignored')")
    params: list[Any] = [SUGGESTION_TOPIC, period.start, period.end]
    if agency:
        sql += " AND r.agency=?"
        params.append(agency)
    rows = await store.fetchall(sql + " ORDER BY r.received_at, r.id", params)
    cases = (await dispatch_queries.cases_of_incidents(store, [r["incident_id"] for r in rows])
             if "cases" in await _tables(store) else {})
    out = []
    for row in rows:
        case = cases.get(row["incident_id"])
        out.append(Suggestion(report_id=row["id"], received_at=row["received_at"], channel=row["channel"],
                              district=row["district"], agency=row["agency"], status=row["status"],
                              incident_id=row["incident_id"], case_id=case["id"] if case else None,
                              case_state=case["state"] if case else None, excerpt=_excerpt(row["record"])))
    return out


def _excerpt(record: str) -> str:
    try:
        data = json.loads(record)
    except ValueError:
        return ""
    text = " ".join(p for p in (data.get("subject"), data.get("text")) if p)
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT_CHARS else text[:EXCERPT_CHARS - 1].rstrip() + "…"
