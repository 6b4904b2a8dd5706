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
HOUR = 3600.0
DAY = 86400.0

OPEN_STATES = ("forwarded", "acknowledged", "verified", "safety_done", "in_progress")
CLOSED_STATES = ("resolved", "closed_false", "refused", "merged")

ANSWER_KINDS = (
    "acknowledged",  # the agency has taken the case
    "false_report",  # checked: nothing there; closes the case (7.1: within 1 h)
    "verified",  # checked on site, the incident is real (7.1: within 2 h)
    "safety_measures",  # temporary barriers/signs placed: a complex incident, 8 h to fix
    "in_progress",  # being fixed, with an expected completion time
    "progress_report",  # progress with photos and a committed date (7.2)
    "resolved",  # done, with photos of the site; closes the case
    "returned",  # not ours, with a reason: re-routed
    "reassigned",  # the operator unit sends the case to a named agency (its guidance, Art. 6)
    "refused",  # the operator unit refuses it (Art. 4: outside the regulation), with the reason; closes the case
)

# Which answers satisfy which running clock.
MEETS: dict[str, frozenset[str]] = {
    "operator_guidance": frozenset(ANSWER_KINDS),
    "review": frozenset(ANSWER_KINDS),
    "site_check": frozenset({"verified", "safety_measures", "in_progress", "resolved", "false_report"}),
    "fix": frozenset({"resolved", "false_report"}),
    "answer": frozenset({"resolved", "false_report"}),
    "completion": frozenset({"resolved", "false_report"}),
}


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
                     coordination: bool = False) -> list[DeadlineSpec]:
    """The clocks that start when a case reaches `agency` at `at`."""
    if agency == OPERATOR_UNIT:
        return [_spec("operator_guidance", at, at + HOUR, warn)]
    if category == "infrastructure":
        return [_spec("site_check", at, at + 2 * HOUR, warn), _spec("fix", at, at + 2 * HOUR, warn)]
    if category in ("suggestion", "directive"):
        days = 15 if coordination else 10
        return [_spec("review", at, calendar.add_working_days(at, 1), warn),
                _spec("answer", at, at + days * DAY, warn)]
    # Category 2 and anything else handled like it (7.1: "not an incident" is handled like category 2).
    return [_spec("answer", at, calendar.add_working_days(at, 5), warn)]


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
    set_complex: bool = False
    set_coordination: bool = False
    expected_completion: float | None = None


class AnswerRejected(ValueError):
    """The answer does not fit the case (closed, wrong kind, missing field); the API answers 409/422."""


def answer_effect(case: CaseView, kind: str, data: dict[str, Any], now: float, calendar: WorkCalendar,
                  warn: WarnPolicy) -> AnswerEffect:
    if kind not in ANSWER_KINDS:
        raise AnswerRejected(f"unknown answer kind {kind!r}")
    if case.state in CLOSED_STATES:
        raise AnswerRejected("the case is closed")
    meets = frozenset(k for k, kinds in MEETS.items() if kind in kinds)
    expected = data.get("expected_completion")
    if kind == "acknowledged":
        return AnswerEffect(state="acknowledged" if case.state == "forwarded" else case.state, meets=meets)
    if kind == "verified":
        return AnswerEffect(state="verified", meets=meets)
    if kind == "false_report":
        judged: tuple[Judged, ...] = ()
        if case.category == "infrastructure":
            due = case.forwarded_at + HOUR
            judged = (Judged(kind="close_false", started_at=case.forwarded_at, due_at=due, met=now <= due),)
        return AnswerEffect(state="closed_false", closes=True, meets=meets, cancel_all=True, judged=judged)
    if kind == "safety_measures":
        # 7.1 complex incident: barriers within 2 h, then 8 h (from forwarding) to fix.
        return AnswerEffect(state="safety_done", meets=meets, set_complex=True,
                            reschedule={"fix": case.forwarded_at + 8 * HOUR})
    if kind in ("in_progress", "progress_report"):
        if expected is None:
            if kind == "in_progress":
                raise AnswerRejected("in_progress needs expected_completion")
            return AnswerEffect(state="in_progress", meets=meets)
        if expected <= now:
            raise AnswerRejected("expected_completion must be in the future")
        # Recording an expected completion time satisfies the fix / answer clock (7.1, 7.2) and starts a new one.
        meets = meets | {"fix", "answer", "completion"}
        coordination = bool(data.get("several_agencies")) and case.category in ("suggestion", "directive")
        return AnswerEffect(state="in_progress", meets=meets, expected_completion=expected,
                            set_coordination=coordination,
                            new_deadlines=(_spec("completion", now, expected, warn),))
    if kind == "resolved":
        return AnswerEffect(state="resolved", closes=True, meets=meets, cancel_all=True)
    if kind == "refused":
        return AnswerEffect(state="refused", closes=True, meets=meets, cancel_all=True)
    if kind == "returned":
        due = return_allowance(case.category, case.forwarded_at, calendar, bool(data.get("field_check")))
        return AnswerEffect(state="forwarded", meets=meets, cancel_all=True, reroute=True,
                            judged=(Judged(kind="return_misroute", started_at=case.forwarded_at, due_at=due,
                                           met=now <= due),))
    # reassigned: the operator's guidance, a re-route to a named agency.
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
