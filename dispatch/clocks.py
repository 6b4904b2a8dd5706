"""The regulation's clocks at run time: a warning before each deadline, an escalation after it, the overdue list.

Deadlines are rows (dispatch/schema.py), started and met by dispatch/cases.py and the delivery sender; this
module only watches the time. `overdue()` is what the operators' console and the CLI show.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from ingest.clock import Clock
from ingest.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Overdue:
    case_id: str
    incident_id: str
    agency: str
    kind: str
    due_at: float
    overdue_seconds: float
    case_state: str


@dataclass(frozen=True, slots=True)
class TickResult:
    warned: int
    escalated: int


async def tick(store: Store) -> TickResult:
    """Raise the warnings and escalations that are due now; each fires once per deadline."""
    now = store.clock.now()
    async with store.transaction() as tx:
        warn_rows = await tx.fetchall(
            "UPDATE deadlines SET warned_at=? WHERE state='open' AND warned_at IS NULL AND warn_at<=? AND due_at>?"
            " RETURNING id, case_id, agency, kind, due_at", (now, now, now))
        late_rows = await tx.fetchall(
            "UPDATE deadlines SET state='missed', escalated_at=? WHERE state='open' AND due_at<=?"
            " RETURNING id, case_id, agency, kind, due_at", (now, now))
        for kind, rows in (("deadline_warning", warn_rows), ("deadline_escalation", late_rows)):
            for row in rows:
                case = await tx.fetchone("SELECT report_id FROM cases WHERE id=?", (row["case_id"],))
                await tx.event(case["report_id"] if case else None, kind, "dispatch",
                               {"case_id": row["case_id"], "agency": row["agency"], "deadline": row["kind"],
                                "due_at": row["due_at"]})
    for row in late_rows:
        log.warning("case %s: %s deadline missed by %s", row["case_id"], row["kind"], row["agency"])
    return TickResult(len(warn_rows), len(late_rows))


async def overdue(store: Store, now: float | None = None, agency: str | None = None) -> list[Overdue]:
    """Every running deadline past due (escalated or not yet ticked), most overdue first."""
    now = store.clock.now() if now is None else now
    sql = ("SELECT d.case_id, c.incident_id, d.agency, d.kind, d.due_at, c.state FROM deadlines d"
           " JOIN cases c ON c.id=d.case_id WHERE d.state IN ('open','missed') AND d.due_at<=?")
    params: list[object] = [now]
    if agency:
        sql += " AND d.agency=?"
        params.append(agency)
    rows = await store.fetchall(sql + " ORDER BY d.due_at", params)
    return [Overdue(case_id=r["case_id"], incident_id=r["incident_id"], agency=r["agency"], kind=r["kind"],
                    due_at=r["due_at"], overdue_seconds=now - r["due_at"], case_state=r["state"]) for r in rows]


class DeadlineTicker:
    name = "dispatch-clocks"

    def __init__(self, store: Store, clock: Clock, interval: float) -> None:
        self.store = store
        self.clock = clock
        self.interval = interval

    async def run(self) -> None:
        while True:
            try:
                await tick(self.store)
            except Exception:  # a failed tick is retried at the next one; the clocks are rows, nothing is lost
                log.exception("deadline tick failed")
            await self.clock.sleep(self.interval)
