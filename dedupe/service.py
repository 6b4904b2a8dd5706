"""The `dedupe` stage: give every routed or in-review report an incident, and decide dispatch or duplicate.

Contract (see the pipeline notes in the README):
- a report matching an open incident gets that incident, status `duplicate` and a `notify` job
  {"template": "duplicate_ack", "incident_id"}; a `review` report keeps status `review` but still joins;
- the first report of a new incident, when `routed`, gets a `dispatch` job {"incident_id"}; a `routed`
  report joining an incident that has no case yet (its first report is still in review) triggers it;
- a job with `incident_state` (queued by dispatch when a case closes or reopens) closes or reopens the incident
  (dedupe/incidents.py) when its case state version is newer than the last the incident applied (not as the
  queue orders the jobs: on PostgreSQL another instance may apply a later one first; a stale one changes nothing);
  on this queue, so every report queued after the closure sees the
  incident closed; a report received before the closure that joined after it (a duplicate of a case no longer
  running) is closed with it and its reporter told the result, one received after it is matched again (a
  recurrence: its own case); a report that would repeat a closed incident whose reopening waits behind it
  (ingest.jobs.reopening_subject) reopens it first and joins it;
- a job with `case_report` (queued by dispatch when it opened or moved a case onto an incident an operator merged
  it into) makes the job's report the incident's case report (`dispatch_report_id`); like a closing or reopening,
  it is retried until applied and dies only for a permanent cause, with an operator alert (dedupe_job_dead);
- re-entry with payload {"after_review": true}: the report already has an incident -> `dispatch` when that
  incident has no case yet, else `duplicate` + `duplicate_ack`; unless the operator's topic fits none of the
  incident's other reports (policy.belongs_after_review): then it leaves that incident and is matched afresh (an
  incident it leaves empty is retired, merged into where it went).
Jobs are handled in queue order; each match runs inside the transaction that finishes its job and sees every
earlier report (on SQLite a leased batch is finished in one transaction, and the match sees the batch's earlier
reports too). Several instances on one PostgreSQL store each run the stage: a decision locks the blocks it reads
and first reads what the others decided in them (dedupe/blocks.py).
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from config.schema import QueueConfig
from ingest.app import AppContext, Service
from ingest.dialect import POSTGRESQL
from ingest.errors import PermanentError, TransientError
from ingest.jobs import DEDUPE, DISPATCH, NOTIFY, DedupeJob, DispatchJob, NotifyJob, closing_subject, \
    reopening_subject
from ingest.queue import JobKind, register_kind, report_dead
from ingest.records import Job
from ingest.store import Store, StoredReport, Tx
from ingest.worker import StageWorker, WorkerSettings

from . import incidents, policy
from .blocks import Blocks, LocalBlocks, SharedBlocks
from .features import load_view
from .matcher import IncidentMatcher

log = logging.getLogger(__name__)

STAGE = "dedupe"
MATCH_STATUSES = ("routed", "review")


async def route_member(tx: Tx, report_id: int, incident_id: str, status: str) -> str:
    """Dispatch or acknowledge a member report by the contract; returns what was done."""
    now = tx.store.clock.now()
    if status != "routed":
        # Art. 6: every report is acknowledged within 5 minutes, also one an operator has yet to classify.
        await tx.enqueue(NOTIFY, report_id, NotifyJob(template="received"))
        return "held_for_review"
    row = await incidents.routing_state(tx, incident_id)
    if row is not None and row["state"] == "closed":
        # It arrived while the case was open and was held for review until after the case closed: it shares
        # the incident's result (a new report of the problem, after the closure, opens a recurrence instead).
        await share_result(tx, report_id, incident_id)
        return "closed"
    if row is not None and row["dispatch_report_id"] is None:
        await incidents.set_dispatch_report(tx, incident_id, report_id)
        await tx.enqueue(DISPATCH, report_id, DispatchJob(incident_id=incident_id,
                                                          recurrence_of=row["recurrence_of"]), need_id=False)
        return "dispatch"
    await tx.write("UPDATE reports SET status='duplicate', updated_at=? WHERE id=?", (now, report_id))
    await tx.enqueue(NOTIFY, report_id, NotifyJob(template="duplicate_ack", incident_id=incident_id), need_id=False)
    return "duplicate"


async def share_result(tx: Tx, report_id: int, incident_id: str) -> None:
    """The member report of a closed incident is closed with it, and its reporter gets the result (Art. 7.4)."""
    await tx.execute("UPDATE reports SET status='closed', updated_at=? WHERE id=?", (tx.store.clock.now(), report_id))
    await tx.enqueue(NOTIFY, report_id, NotifyJob(template="result", incident_id=incident_id))


def placed_event(incident_id: str, match: policy.Match, done: str) -> dict[str, Any]:
    """The `incident` event's data: where the report went, how it matched and what routing did."""
    data = {"incident_id": incident_id, "new": match.incident_id is None, "score": round(match.score, 4),
            "matched_report": match.matched_report, "action": done}
    if match.recurrence_of:
        data["recurrence_of"] = match.recurrence_of
    return data


# Relocates the reports of an incident that closed at `at` received after that (DedupeStage.leave_closed).
LateReports = Callable[[Tx, str, float], Awaitable[None]]
LATE_STATUSES = ("duplicate", "review")  # the late reports it matches again


async def late_without_district(reader: incidents.Reader, incident_id: str, at: float) -> bool:
    """Whether a report the incident closing at `at` matches again has no district: it may join any district's
    incident, so that closing locks every district, as a decision about such a report does (dedupe/blocks.py)."""
    rows = await incidents.members_received_after(reader, incident_id, at, LATE_STATUSES)
    return any(r["district"] is None for r in rows)


def overtaken(job_id: int, version: int | None, waiting: list[tuple[int, DedupeJob]]) -> bool:
    """Whether a later change of the case than the closing (`job_id`, `version`) waits among `waiting` (id, payload)
    of its incident's state jobs: a larger version, or (a job queued before versions) a later job."""
    for other_id, other in waiting:
        # A closing queued before versions existed has only the queue's order to go by.
        later = other_id > job_id if version is None else other.version is not None and other.version > version
        if later:
            return True
    return False


def incident_state_writes(job_id: int, payload: DedupeJob, blocks: Blocks | None = None,
                          late: LateReports | None = None) -> Any:
    """Dispatch closed or reopened the incident's case: the incident follows, in this stage's transaction.

    Decided by the change's case state version (DedupeJob.version), not by the job's place in the queue: applied
    only when newer than the last change the incident applied, so a stale one (another instance applied a later
    change of the case first, dedupe/blocks.py orders decisions in time only; a retry; a replay) does nothing and
    the incident ends as the case's latest state, with its latest closing's date and result."""
    incident_id = payload.incident_id
    if not incident_id or payload.incident_state not in ("open", "closed"):
        raise PermanentError(f"incident state job without an incident or a known state: {payload!r}")

    async def writes(tx: Tx) -> None:
        row = await incidents.get(tx, incident_id)
        at = payload.at if payload.at is not None else tx.store.clock.now()
        if blocks is not None:
            # Ordered with the decisions about its district: none joins it while it closes. A closing that matches
            # a late report with no district again (leave_closed) is ordered with every district's decisions, as
            # a decision about that report is.
            district = row["district"] if row is not None else None
            rematch = payload.incident_state == "closed" and late is not None and district is not None
            if rematch and await late_without_district(tx, incident_id, at):
                district = None
            await blocks.enter(tx, district)
            if rematch and district is not None and await late_without_district(tx, incident_id, at):
                # It joined between that look and the lock (its decision held every district's lock until then).
                raise TransientError("a report with no district joined the closing incident meanwhile; again")
        subjects = [closing_subject(incident_id), reopening_subject(incident_id)]
        if payload.incident_state == "closed" and overtaken(
                job_id, payload.version, await tx.store.queue.waiting_payloads(STAGE, subjects)):
            # The case was disputed (or closed) again since and that change waits, or is leased (in this batch, or
            # by another instance): this closing's date, result, moves and shares are not the case's; the later one
            # decides (a reopening, always applied when newer, then its closing).
            log.info("dedupe: incident %s not closed: a later change of its case waits", incident_id)
            return
        if payload.incident_state == "closed":
            if not await incidents.close(tx, incident_id, payload.closed_as or "resolved", at, payload.version):
                # A later reopening or closing of the case was applied first (another instance, or a retry of this
                # job after it): that one is the case's state.
                log.info("dedupe: incident %s not closed: closing %s is stale", incident_id, payload.version)
                return
            if late is not None:
                # Reports received after the fix that joined while its closing waited (on another instance): a
                # repeat of a fixed problem, never given a result that predates them.
                await late(tx, incident_id, at)
            # Dispatch closed the reports the incident held when the case closed. A report whose job was queued
            # before this one joined since, as a duplicate of a case that no longer runs: it shares the result.
            for report_id in await incidents.members_with_status(tx, incident_id, "duplicate"):
                await share_result(tx, report_id, incident_id)
        elif not await incidents.reopen(tx, incident_id, payload.version):
            log.info("dedupe: incident %s not reopened: reopening %s is stale", incident_id, payload.version)
            return
        log.info("dedupe: incident %s %s (case state %s)", incident_id, payload.incident_state, payload.version)
    return writes


def incident_state_job(job: Job) -> bool:
    """Whether the job closes or reopens an incident with its case (it must never die of a transient cause; given
    up, the incident would stay open under a closed case, and a repeat of the fixed problem would join that case as
    a duplicate, with no result ever)."""
    return job.payload is not None and job.payload.incident_state is not None


def case_report_job(job: Job) -> bool:
    """Whether the job names the report of an incident's case (DedupeJob.case_report): given up, the incident would
    keep naming another report as its case's (dispatch_report_id), the one routing reads and a split keeps with
    the case, so a split could take the case's own report away to a second case."""
    return job.payload is not None and job.payload.case_report


def keeps_following_its_case(job: Job) -> bool:
    """WorkerSettings.keep_trying of the stage: the jobs that keep an incident following its case (dispatch queues
    them) are retried with capped backoff until applied, never dead of a transient cause. Applying one again is
    safe (versions for closings and reopenings; a case report job names the one case's report)."""
    return incident_state_job(job) or case_report_job(job)


def incident_change_of(job: Job) -> tuple[str, str] | None:
    """("close" | "reopen" | "case_report", incident id) of a job that keeps an incident following its case, read
    from its subject (closing_subject, reopening_subject, case_report_subject): also there when its payload no
    longer decodes; a case report job queued before it had a subject, from its payload. None for any other dedupe
    job."""
    change, _, incident_id = (job.subject or "").partition(":")
    if change in ("close", "reopen", "case_report") and incident_id.startswith("INC-"):
        return change, incident_id
    if job.subject is None and job.payload is not None and job.payload.case_report and job.payload.incident_id:
        return "case_report", str(job.payload.incident_id)
    return None


async def dedupe_job_dead(tx: Tx, job: Job, error: str) -> None:
    """A dedupe job's death (on_dead, and on_undecodable when its lease buried it): the report rule, and for a job
    that keeps an incident following its case (dead only for a permanent cause, keeps_following_its_case) an alert
    to the operators on the case's report: the incident no longer follows its case until someone mends and replays
    the job. A closing or reopening: `incident_state_dead`; a case report: `case_report_dead`."""
    await report_dead(tx, job, error)
    change = incident_change_of(job)
    if change is None:
        return
    if change[0] == "case_report":
        await tx.event(job.report_id, "alert", "dedupe", {"alert": "case_report_dead", "incident_id": change[1],
                                                          "job_id": job.id, "error": error})
        log.error("dedupe: the case report of incident %s (job %d) is dead; the incident may name another report"
                  " as its case's", change[1], job.id)
        return
    await tx.event(job.report_id, "alert", "dedupe", {"alert": "incident_state_dead", "change": change[0],
                                                      "incident_id": change[1], "job_id": job.id, "error": error})
    log.error("dedupe: the %s of incident %s (job %d) is dead; the incident no longer follows its case", change[0],
              change[1], job.id)


register_kind(JobKind(DEDUPE, on_dead=dedupe_job_dead, on_undecodable=dedupe_job_dead))


def case_report_writes(incident_id: str, report_id: int, blocks: Blocks) -> Any:
    """Dispatch opened the incident's case with `report_id`, or moved a case there (after an operator's merge): the
    incident names that report as its case's, under its district's lock (routing reads it there).

    Unlike a closing, it needs no version: the jobs of one incident may run in any order (retries, replays, several
    instances) and leave the same. Each names the report of the one case the incident can hold (cases.incident_id
    is unique, and a case leaves an incident only when that incident is merged away: dispatch then moves it where
    its report is now, dispatch/cases.py _merge_writes), and this stage's own writes of the column never undo one
    (route_member fills it only while empty, absorb keeps the kept incident's). One for an incident merged away
    since changes nothing anyone reads. tests/dispatch/test_merged_case_report.py runs them both ways."""

    async def writes(tx: Tx) -> None:
        row = await incidents.get(tx, incident_id)
        if row is None:
            raise PermanentError(f"case report of an unknown incident {incident_id}")
        await blocks.enter(tx, row["district"])
        await incidents.set_dispatch_report(tx, incident_id, report_id)
    return writes


class DedupeStage:
    """Handler of the `dedupe` queue; one per daemon (its window is the daemon's)."""

    def __init__(self, store: Store, matcher: IncidentMatcher, blocks: Blocks | None = None) -> None:
        self.store = store
        self.matcher = matcher
        self.blocks = blocks or LocalBlocks(matcher)

    async def handle(self, job: Job, report: StoredReport) -> Any:
        """The job's writes. Matching runs inside them, in the transaction that finishes the job: the worker
        commits a batch of jobs at once, and each match must see the reports and incidents of the jobs before it
        (read through the transaction, which sees its own writes; the window holds them, see matcher.hold)."""
        payload = job.payload
        if payload.case_report:
            return case_report_writes(str(payload.incident_id), int(report.id), self.blocks)
        if payload.incident_state is not None:
            return incident_state_writes(job.id, payload, self.blocks, self.leave_closed)
        if report.status not in MATCH_STATUSES:
            log.info("dedupe: report %d has status %s, nothing to do", report.id, report.status)
            return None
        status = report.status
        after_review = job.payload.after_review
        view = await load_view(self.store, report.id)  # the report's own records: no other job changes them
        if view is None:
            raise TransientError("report row vanished")

        async def writes(tx: Tx) -> None:
            await self.blocks.enter(tx, view.district)
            await self.apply(tx, view, status, after_review)
        return writes

    async def apply(self, tx: Tx, view: policy.ReportView, status: str, after_review: bool) -> None:
        existing = await incidents.incident_of_report(tx, view.report_id)
        stored = view  # as a rebuilt window would hold it (matching afresh may leave out its alternatives)
        left = None
        if existing is not None and after_review and not policy.belongs_after_review(
                view.topic, await incidents.other_member_topics(tx, existing, view.report_id),
                (await incidents.get(tx, existing))["topic"]):
            # The operator decided the report is about something else than the incident it joined in review: it
            # leaves it (that case would never reach the right agency for it) and is matched afresh, by the
            # operator's topic alone (the model's alternatives would lead it back).
            left, existing = existing, None
            view = dataclasses.replace(view, alt_topics=frozenset())
        if existing is not None:
            # After review (or a replayed job): the report keeps its incident; only routing is decided.
            done = await route_member(tx, view.report_id, existing, status)
            await tx.event(view.report_id, "incident_routed", "dedupe",
                           {"incident_id": existing, "action": done, "after_review": after_review})
            if after_review:
                # The operator may have given it another topic: the windows index it under that one from now.
                await incidents.rejoined(tx, view.report_id)
                self.matcher.hold(tx, stored)
            return
        incident_id, match = await self.place(tx, view)
        done = await route_member(tx, view.report_id, incident_id, status)
        data = placed_event(incident_id, match, done)
        if left is not None:
            data["left"] = left
            # Left by its only report (which opened it, without a case), it is retired into the incident the report
            # went to: it never matches or lists as open again; its row, dates and that link stay as history.
            if not await incidents.retire_if_empty(tx, left, incident_id):
                await incidents.refresh_last_report(tx, left)
        await tx.event(view.report_id, "incident", "dedupe", data)
        self.matcher.hold(tx, stored)

    async def place(self, tx: Tx, view: policy.ReportView) -> tuple[str, policy.Match]:
        """Match the report against the open incidents and join the one found, or open one; returns the incident
        and the match."""
        match = await self.matcher.match(view, reader=tx)
        if match.recurrence_of is not None and await self.reopen_waiting(tx, match.recurrence_of):
            match = await self.matcher.match(view, reader=tx)
        if match.incident_id is not None:
            await incidents.join(tx, view.report_id, match.incident_id, view.received_at, score=match.score,
                                 matched_report=match.matched_report)
            await self.blocks.joined(tx, view.report_id, view.district)
            return match.incident_id, match
        incident_id = await incidents.create(
            tx, first_report_id=view.report_id, topic=view.topic, district=view.district,
            created_at=view.received_at, last_report_at=view.received_at,
            place=incidents.place_summary(view.place), recurrence_of=match.recurrence_of)
        await incidents.join(tx, view.report_id, incident_id, view.received_at)
        return incident_id, match

    async def reopen_waiting(self, tx: Tx, incident_id: str) -> bool:
        """Reopen the closed incident now when a reopening of its case newer than its closing waits on this queue
        (a disputed case): the report that would repeat it joins the reopened case as it would after that job,
        instead of opening a second case at the same agency for the same problem; the job then finds it applied.
        One already applied (leased in this batch, or by another instance) or overtaken by a later closing of the
        case is not newer: nothing is done. Returns whether it reopened."""
        waiting = await self.store.queue.waiting_payloads(STAGE, [reopening_subject(incident_id)])
        versions = [p.version for _, p in waiting if p.incident_state == "open" and p.incident_id == incident_id]
        if not versions:
            return False
        numbered = [v for v in versions if v is not None]
        return await incidents.reopen(tx, incident_id, max(numbered) if numbered else None)

    async def leave_closed(self, tx: Tx, incident_id: str, closed_at: float) -> None:
        """The incident just closed with its case at `closed_at`: its reports received after that (they joined
        before the closing was applied, out of queue order) leave it and are matched again, as reports after the
        closing are (a recurrence, README "Case lifecycle and deadlines"): a duplicate is routed there (its own
        case), one in review stays the operator's and is routed there after the decision."""
        for row in await incidents.members_received_after(tx, incident_id, closed_at, LATE_STATUSES):
            view = await load_view(self.store, row["id"])
            if view is None:
                continue
            moved_to, match = await self.place(tx, view)
            done = "held_for_review" if row["status"] == "review" else \
                await route_member(tx, row["id"], moved_to, "routed")
            await tx.event(row["id"], "incident", "dedupe",
                           {**placed_event(moved_to, match, done), "left": incident_id})
        await incidents.refresh_last_report(tx, incident_id)


def worker_settings(q: QueueConfig, blocks: Blocks) -> WorkerSettings:
    """How the stage's worker runs: `[queue]`'s batch, lease and attempts; a closing or reopening of an incident, and
    a case report job, are retried until applied (keeps_following_its_case)."""
    return WorkerSettings(batch=q.batch, lease_seconds=q.lease_seconds, max_attempts=q.max_attempts,
                          group_commit=blocks.group_commit, group_size=q.group_commit_jobs,
                          keep_trying=keeps_following_its_case)


class DedupeService:
    name = "dedupe"

    def __init__(self, ctx: AppContext) -> None:
        cfg = ctx.settings.dedupe
        q = ctx.settings.queue
        self.store = ctx.store
        self.matcher = IncidentMatcher(ctx.store, cfg.window_days, cfg.match_threshold)
        # Every instance of a PostgreSQL store decides incidents, ordered per district (dedupe/blocks.py).
        self.blocks: Blocks = SharedBlocks(self.matcher) if ctx.store.dialect is POSTGRESQL \
            else LocalBlocks(self.matcher)
        self.stage = DedupeStage(ctx.store, self.matcher, self.blocks)
        # Jobs in lease order; on SQLite a batch finished in one commit (each job in a savepoint): every match runs
        # inside that transaction and sees the jobs before it (see DedupeStage.handle).
        self.worker = StageWorker(ctx.store, STAGE, self.stage.handle, worker_settings(q, self.blocks))

    async def run(self) -> None:
        loaded = await self.blocks.rebuild(self.store)
        log.info("dedupe: window rebuilt from the store with %d reports", loaded)
        await self.worker.run()


def build(ctx: AppContext) -> list[Service]:
    return [DedupeService(ctx)]
