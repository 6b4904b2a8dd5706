"""The regulation's rules as pure functions: which clocks start when a case reaches an agency, what each agency
answer does to the case and its clocks, and where a returned case goes next.

No I/O here: dispatch/cases.py applies these decisions inside a store transaction.
REGULATION.md references: Art. 6 (5 min forward, 1 h operator guidance), 7.1 (infrastructure: 1 h false report,
2 h site check, 2 h / 8 h fix, 1 h return), 7.2 (5 working days, 1 or 2 working days return), 7.3 (1 working
day review, 10 / 15 days answer).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .calendar import WorkCalendar

OPERATOR_UNIT = "van-hanh-1022"
CITY_OFFICE = "vp-ubnd"  # Office of the City People's Committee: reviews and forwards categories 3-4 (Art. 7.3)
HOUR = 3600.0
DAY = 86400.0
MINUTE = 60.0

OPEN_STATES = ("forwarded", "acknowledged", "verified", "safety_done", "in_progress")
CLOSED_STATES = ("resolved", "closed_false", "refused", "merged")
# Every state a case can be in: dispatch owns this list; views read it here (texts: ingest/vocabulary.py).
CASE_STATES = (*OPEN_STATES, *CLOSED_STATES)
# Categories whose cases pass through the City Office (Art. 6 step 2, 7.3).
CITY_OFFICE_CATEGORIES = ("suggestion", "directive")

ANSWER_KINDS = (
    "acknowledged",  # the agency has taken the case and passed it to its unit on the ground (7.1: within 5 min)
    "false_report",  # checked: nothing there; closes the case (7.1: within 1 h)
    "verified",  # checked on site, the incident is real (7.1: within 2 h); `complex` starts the 2 h safety clock
    "safety_measures",  # temporary barriers/signs placed: a complex incident, 8 h to fix
    "in_progress",  # being fixed, with an expected completion time
    "progress_report",  # progress with photos and a committed date (7.2)
    "resolved",  # done, with photos of the site; closes the case
    "returned",  # not ours, with a reason: re-routed
    "reassigned",  # the operator unit (or the City Office) sends the case to a named agency (Art. 6, 7.3)
    "refused",  # the operator unit refuses it (Art. 4: outside the regulation), with the reason; closes the case
    "not_incident",  # 7.1: a request, not a failure: handled like category 2 from now on (5 working days)
    "coordination",  # 7.1: dangerous, large-scale or several agencies: back to the operator unit, which leads
)
# What a supporting agency of a coordinated case answers (its part, never the case's result).
SUPPORTER_KINDS = ("acknowledged", "verified", "in_progress", "progress_report", "resolved", "returned")


def supporter_state(kind: str) -> str:
    """A supporting agency's part after its answer `kind`."""
    return {"resolved": "done", "returned": "withdrawn", "in_progress": "in_progress",
            "progress_report": "in_progress"}.get(kind, "acknowledged")


# Answers only a coordinating unit gives.
COORDINATOR_KINDS = frozenset({"reassigned", "refused"})

# Which answers satisfy which running clock.
MEETS: dict[str, frozenset[str]] = {
    "operator_guidance": frozenset(ANSWER_KINDS),
    "review": frozenset(ANSWER_KINDS),
    "subordinate_forward": frozenset(ANSWER_KINDS),
    "site_check": frozenset({"verified", "safety_measures", "in_progress", "resolved", "false_report",
                             "not_incident"}),
    "safety_measures": frozenset({"safety_measures", "resolved", "false_report"}),
    "fix": frozenset({"resolved", "false_report"}),
    "answer": frozenset({"resolved", "false_report"}),
    "completion": frozenset({"resolved", "false_report"}),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ClockRule:
    """One deadline of the regulation, as the README's table shows it (one definition: the table is tested
    against this)."""

    kind: str
    article: str
    unit: str  # "minutes", "hours", "calendar days", "working days", "committed date"
    length: str
    starts: str
    stops: str


CLOCKS: tuple[ClockRule, ...] = (
    ClockRule(kind="forward", article="6.2", unit="minutes", length="5", starts="receipt of the report",
              stops="the case is delivered to the agency (or the operator unit)"),
    ClockRule(kind="acknowledge", article="6.2", unit="minutes", length="5", starts="receipt of the report",
              stops="the reporter is told it is recorded (also while it waits in review)"),
    ClockRule(kind="operator_guidance", article="6.3", unit="hours", length="1",
              starts="receipt (no handler found, or held for review); arrival at the operator unit otherwise",
              stops="the operator unit decides or re-assigns"),
    ClockRule(kind="duplicate_notice", article="6.4", unit="minutes", length="5",
              starts="receipt of a report of an incident already recorded", stops="that reporter is told"),
    ClockRule(kind="subordinate_forward", article="7.1a", unit="minutes", length="5",
              starts="an infrastructure case reaches the agency", stops="any answer (acknowledged or later)"),
    ClockRule(kind="site_check", article="7.1", unit="hours", length="2", starts="the case reaches the agency",
              stops="verified, safety measures, in progress, resolved or false report"),
    ClockRule(kind="close_false", article="7.1", unit="hours", length="1", starts="the case reaches the agency",
              stops="false report answer (judged when it arrives)"),
    ClockRule(kind="safety_measures", article="7.1b", unit="hours", length="2",
              starts="the case reaches the agency (runs once the agency says it is complex)",
              stops="safety measures answer"),
    ClockRule(kind="fix", article="7.1", unit="hours", length="2 (8 when complex)",
              starts="the case reaches the agency", stops="resolved, or an expected completion time recorded"),
    ClockRule(kind="return_misroute", article="7.1, 7.2", unit="hours / working days",
              length="1 h (infrastructure); 1 working day, 2 with a field check",
              starts="the case reaches the agency", stops="returned answer (judged when it arrives)"),
    ClockRule(kind="answer", article="7.2, 7.1d, 7.3", unit="working days / calendar days",
              length="5 working days (7.2); 10 days, 15 when agencies coordinate (7.3)",
              starts="the case reaches the agency (7.1d: the not-an-incident answer)",
              stops="resolved, false report, or a progress report with photos and a committed date"),
    ClockRule(kind="completion", article="7.1, 7.2b", unit="committed date", length="as committed",
              starts="in progress / progress report with a committed date", stops="resolved"),
    ClockRule(kind="review", article="7.3", unit="working days", length="1",
              starts="a category 3-4 or returned case reaches the City Office", stops="the City Office forwards it"),
)
CLOCK_KINDS = tuple(c.kind for c in CLOCKS)


@dataclass(frozen=True, slots=True, kw_only=True)
class WarnPolicy:
    fraction: float = 0.2
    min_seconds: float = 300.0

    def warn_at(self, started: float, due: float) -> float:
        lead = max(self.min_seconds, (due - started) * self.fraction)
        return max(started, due - lead)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadlineSpec:
    kind: str
    started_at: float
    due_at: float
    warn_at: float


def _spec(kind: str, start: float, due: float, warn: WarnPolicy) -> DeadlineSpec:
    return DeadlineSpec(kind=kind, started_at=start, due_at=due, warn_at=warn.warn_at(start, due))


def forward_deadline(received_at: float, warn: WarnPolicy) -> DeadlineSpec:
    """Art. 6: receive, classify and forward within 5 minutes of receipt."""
    return _spec("forward", received_at, received_at + 5 * 60, warn)


def agency_deadlines(*, category: str, agency: str, at: float, calendar: WorkCalendar, warn: WarnPolicy,
                     coordination: bool = False, received_at: float | None = None) -> list[DeadlineSpec]:
    """The clocks that start when a case reaches `agency` at `at` (`received_at`: the report's receipt, from
    which the operator unit's hour runs when no handler was found at classification, Art. 6.3)."""
    if agency == OPERATOR_UNIT:
        start = at if received_at is None else received_at
        return [_spec("operator_guidance", start, start + HOUR, warn)]
    if agency == CITY_OFFICE:
        # 7.3: the City Office reviews and forwards within 1 working day (categories 3-4, returned cases).
        return [_spec("review", at, calendar.add_working_days(at, 1), warn)]
    if category == "infrastructure":
        return [_spec("subordinate_forward", at, at + 5 * MINUTE, warn),
                _spec("site_check", at, at + 2 * HOUR, warn), _spec("fix", at, at + 2 * HOUR, warn)]
    if category in CITY_OFFICE_CATEGORIES:
        days = 15 if coordination else 10
        return [_spec("answer", at, at + days * DAY, warn)]
    # Category 2 and anything else handled like it (7.1: "not an incident" is handled like category 2).
    return [_spec("answer", at, calendar.add_working_days(at, 5), warn)]


def receipt_clock(kind: str, received_at: float, at: float) -> Judged:
    """A reporter-facing 5-minute clock (6.2 acknowledge, 6.4 duplicate notice), judged when the message goes."""
    due = received_at + 5 * MINUTE
    return Judged(kind=kind, started_at=received_at, due_at=due, met=at <= due)


def return_allowance(category: str, forwarded_at: float, calendar: WorkCalendar, field_check: bool) -> float:
    """When a misrouted case must be back: 1 h for infrastructure, 1 working day (2 with a field check) otherwise."""
    if category == "infrastructure":
        return forwarded_at + HOUR
    return calendar.add_working_days(forwarded_at, 2 if field_check else 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseView:
    id: str
    category: str
    agency: str
    state: str
    forwarded_at: float
    complex: bool = False
    coordination: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Judged:
    """A conditional clock, judged when the answer arrives (whether it applies is known only then)."""

    kind: str
    started_at: float
    due_at: float
    met: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class AnswerEffect:
    state: str
    closes: bool = False
    meets: frozenset[str] = frozenset()
    cancel_all: bool = False
    reschedule: dict[str, float] = field(default_factory=dict)  # kind -> new due (e.g. fix 2 h -> 8 h)
    new_deadlines: tuple[DeadlineSpec, ...] = ()
    judged: tuple[Judged, ...] = ()
    reroute: bool = False
    reroute_to: str | None = None  # a fixed next holder (else: the next candidate, or the one named)
    set_category: str | None = None
    set_complex: bool = False
    set_coordination: bool = False
    expected_completion: float | None = None


class AnswerRejected(ValueError):
    """The answer does not fit the case (closed, wrong kind, missing field); the API answers 409/422."""


def answer_effect(case: CaseView, kind: str, data: dict[str, Any], now: float, calendar: WorkCalendar,
                  warn: WarnPolicy, *, photo_required: bool = False) -> AnswerEffect:
    """What answer `kind` does to `case` and its clocks. `photo_required`: this case's topic needs a photo of
    the site with its result (config, per topic)."""
    if kind not in ANSWER_KINDS:
        raise AnswerRejected(f"unknown answer kind {kind!r}")
    if case.state in CLOSED_STATES:
        raise AnswerRejected("the case is closed")
    meets = frozenset(k for k, kinds in MEETS.items() if kind in kinds)
    expected = data.get("expected_completion")
    photos = data.get("photos") or ()
    reschedule: dict[str, float] = {}
    coordination = bool(data.get("several_agencies")) and case.category in CITY_OFFICE_CATEGORIES
    if coordination and not case.coordination:
        # 7.3: fifteen days instead of ten when several agencies must coordinate: the running clock is extended.
        reschedule["answer"] = case.forwarded_at + 15 * DAY
    if kind == "acknowledged":
        return AnswerEffect(state="acknowledged" if case.state == "forwarded" else case.state, meets=meets,
                            reschedule=reschedule, set_coordination=coordination)
    if kind == "verified":
        if data.get("complex") and case.category == "infrastructure" and not case.complex:
            # 7.1b: a complex incident: temporary safety measures within 2 h, and 8 h (not 2) to fix.
            reschedule["fix"] = case.forwarded_at + 8 * HOUR
            return AnswerEffect(state="verified", meets=meets, set_complex=True, reschedule=reschedule,
                                new_deadlines=(_spec("safety_measures", case.forwarded_at,
                                                     case.forwarded_at + 2 * HOUR, warn),))
        return AnswerEffect(state="verified", meets=meets, reschedule=reschedule, set_coordination=coordination)
    if kind == "false_report":
        judged: tuple[Judged, ...] = ()
        if case.category == "infrastructure":
            due = case.forwarded_at + HOUR
            judged = (Judged(kind="close_false", started_at=case.forwarded_at, due_at=due, met=now <= due),)
        return AnswerEffect(state="closed_false", closes=True, meets=meets, cancel_all=True, judged=judged)
    if kind == "safety_measures":
        # 7.1 complex incident: barriers within 2 h, then 8 h (from forwarding) to fix. Declared only now (no
        # `verified` with `complex` before): the 2 h clock is judged on arrival.
        judged = ()
        if not case.complex:
            due = case.forwarded_at + 2 * HOUR
            judged = (Judged(kind="safety_measures", started_at=case.forwarded_at, due_at=due, met=now <= due),)
        return AnswerEffect(state="safety_done", meets=meets, set_complex=True, judged=judged,
                            reschedule={**reschedule, "fix": case.forwarded_at + 8 * HOUR})
    if kind in ("in_progress", "progress_report"):
        if expected is None:
            raise AnswerRejected(f"{kind} needs expected_completion (the committed date)")
        if expected <= now:
            raise AnswerRejected("expected_completion must be in the future")
        if kind == "progress_report" and not photos:
            raise AnswerRejected("a progress report needs at least one photo (Art. 7.2)")
        # Recording an expected completion time satisfies the fix / answer clock (7.1, 7.2) and starts a new one;
        # while several agencies coordinate (7.3) the 15-day answer clock keeps running.
        meets = meets | {"fix", "completion"} | (frozenset() if coordination or case.coordination else {"answer"})
        return AnswerEffect(state="in_progress", meets=meets, expected_completion=expected,
                            set_coordination=coordination, reschedule=reschedule,
                            new_deadlines=(_spec("completion", now, expected, warn),))
    if kind == "resolved":
        if photo_required and not photos:
            raise AnswerRejected("a resolved case of this topic needs at least one photo of the site")
        return AnswerEffect(state="resolved", closes=True, meets=meets, cancel_all=True)
    if kind == "refused":
        return AnswerEffect(state="refused", closes=True, meets=meets, cancel_all=True)
    if kind == "not_incident":
        if case.category != "infrastructure":
            raise AnswerRejected("only an infrastructure case can be answered 'not an incident'")
        # 7.1: a request rather than a failure: handled like category 2, 5 working days from now.
        return AnswerEffect(state="acknowledged", meets=meets, cancel_all=True, set_category="civic",
                            new_deadlines=(_spec("answer", now, calendar.add_working_days(now, 5), warn),))
    if kind == "coordination":
        # 7.1: dangerous, large-scale or spanning several agencies: the operator unit leads the coordination.
        return AnswerEffect(state="forwarded", meets=meets, cancel_all=True, reroute=True, reroute_to=OPERATOR_UNIT,
                            set_coordination=True)
    if kind == "returned":
        due = return_allowance(case.category, case.forwarded_at, calendar, bool(data.get("field_check")))
        # 7.3: a returned category 3-4 case goes back to the City Office, which forwards it again.
        back_to = CITY_OFFICE if case.category in CITY_OFFICE_CATEGORIES and case.agency != CITY_OFFICE else None
        return AnswerEffect(state="forwarded", meets=meets, cancel_all=True, reroute=True, reroute_to=back_to,
                            judged=(Judged(kind="return_misroute", started_at=case.forwarded_at, due_at=due,
                                           met=now <= due),))
    # reassigned: the operator's guidance or the City Office's forwarding, to a named agency.
    return AnswerEffect(state="forwarded", meets=meets, cancel_all=True, reroute=True)


def next_agency(candidates: Sequence[dict[str, Any]], tried: Iterable[str],
                resolve: Callable[[str], str | None] | None = None) -> str:
    """The best remaining candidate agency for a returned case, else the operator unit (Art. 7.1)."""
    excluded = set(tried)
    for cand in sorted(candidates, key=lambda c: -float(c.get("score") or 0.0)):
        agency = cand.get("agency")
        if agency in (None, "district") and resolve is not None and cand.get("topic"):
            agency = resolve(cand["topic"])
        if agency and agency not in excluded and agency != OPERATOR_UNIT:
            return agency
    return OPERATOR_UNIT
