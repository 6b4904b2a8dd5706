"""Wires the dispatch stage into the daemon: the `dispatch` and `notify` workers, the delivery sender, the
deadline ticker and the HTTP routes. In route mode only the `dispatch` worker runs (cases recorded, nothing sent).
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

from config.dispatch import DispatchConfig, dispatch_settings
from ingest.app import AppContext, Service
from ingest.jobs import AGENCY_EMAIL_REPLY, REPORTER_FOLLOW_UP
from ingest.worker import StageWorker, WorkerSettings

from .api import DispatchApi
from .book import make_book
from .calendar import CalendarWatch
from .cases import CaseBook, NotFound
from .clocks import DeadlineTicker, EscalationSender
from .delivery import DeliverySender
from .notify import Notifier
from .replies import EmailReplies

log = logging.getLogger(__name__)


class _Worker:
    """A StageWorker under a service name."""

    def __init__(self, name: str, worker: StageWorker) -> None:
        self.name = name
        self.worker = worker

    async def run(self) -> None:
        await self.worker.run()


class _NotifyService(_Worker):
    def __init__(self, worker: StageWorker, notifier: Notifier) -> None:
        super().__init__("dispatch-notify", worker)
        self.notifier = notifier

    async def run(self) -> None:
        try:
            await self.worker.run()
        finally:
            await self.notifier.sms.close()


def agency_tokens(ctx: AppContext, cfg: DispatchConfig) -> dict[str, str]:
    tokens = {}
    for agency, a in cfg.agencies.items():
        name = a.token_secret or f"agency.{agency}"
        secret = ctx.settings.secrets.get(name)
        if secret is not None and secret.get_secret_value():
            tokens[agency] = secret.get_secret_value()
    return tokens


def build(ctx: AppContext) -> list[Service]:
    cfg = dispatch_settings(ctx.settings)
    book = make_book(ctx, cfg)
    q = ctx.settings.queue
    wsettings = WorkerSettings(batch=q.batch, lease_seconds=q.lease_seconds, max_attempts=q.max_attempts)
    # A dispatch job's writes decide inside the transaction (the incident's case, its clocks, the outbox), so a
    # leased batch commits once, a savepoint per job, each job's writes seeing those before it: one write-lock
    # hold and one fsync a batch instead of one a case (the lock bounded the pipeline, issue 21).
    dsettings = dataclasses.replace(wsettings, group_commit=True)
    services: list[Service] = [_Worker("dispatch", StageWorker(ctx.store, "dispatch", book.handle_dispatch,
                                                                dsettings))]
    if ctx.route_mode:
        return services
    notifier = Notifier(ctx.store, ctx.directory, cfg, ctx.replies, ctx.settings.http.public_base_url,
                        max_attempts=q.max_attempts)
    ctx.published.sms_gateway = notifier.sms  # the weekly reports (ops/) text agency leadership through it

    # The email channels queue agencies' replies to dispatch emails, and reporters' replies threaded onto their
    # reports, as jobs (channels never import a stage); they are applied here, each in its job's transaction.
    replies = EmailReplies(book)
    services.append(_Worker("dispatch-agency-replies", StageWorker(ctx.store, AGENCY_EMAIL_REPLY,
                                                                   replies.handle_agency_reply, wsettings)))
    services.append(_Worker("dispatch-reporter-follow-ups", StageWorker(ctx.store, REPORTER_FOLLOW_UP,
                                                                        replies.handle_follow_up, wsettings)))
    email_channels = [c for c in ctx.settings.channels if c.kind in ("smtp", "imap") and c.enabled]
    if cfg.email_answers.require_sender_auth and email_channels and not any(
            c.options().get("trusted_authserv_ids") for c in email_channels):
        log.warning("no email channel sets trusted_authserv_ids: agencies' emailed answers cannot be authenticated"
                    " and will wait as notes for operators (see [dispatch.email_answers])")
    notifier.book = book
    # The web portal's lookup page records a reporter's rating and dispute through the case book (the portal
    # imports no stage): report_rating(report_id, score, comment), case_dispute(report_id=, case_id=, reason=);
    # case_rating(token, score, comment) takes a reporter's lookup token.
    ctx.published.case_rating = book.rate
    ctx.published.report_rating = book.rate_report

    async def case_dispute(*, report_id: int, case_id: str, reason: str) -> str:
        return await book.dispute(report_id, reason, source="lookup", case_id=case_id)

    ctx.published.case_dispute = case_dispute

    async def reporter_follow_up(*, report_id: int, text: str, channel: str) -> str:
        """A reporter wrote again on their chat about `report_id`: after a result, within the dispute window, and
        saying it is not fixed, it is a dispute; otherwise it stays a note on the report's timeline. Returns
        "disputed" or "noted". (The classifier asks, and needs the answer at once; email replies come as
        `reporter_follow_up` jobs instead, see dispatch/replies.py.)"""
        from ingest.text import fold

        from .cases import ReporterRejected
        from .messages import is_dispute
        if not is_dispute(fold(text)):
            return "noted"
        try:
            await book.dispute(report_id, text, source=channel)
        except (ReporterRejected, NotFound):
            return "noted"
        return "disputed"

    ctx.published.reporter_follow_up = reporter_follow_up
    # Notify failures are recorded in `notifications`; the worker never dead-letters (which would fail the report).
    nsettings = WorkerSettings(batch=q.batch, lease_seconds=q.lease_seconds, max_attempts=q.max_attempts + 1)
    if cfg.notify.enabled:
        services.append(_NotifyService(StageWorker(ctx.store, "notify", notifier.handle, nsettings), notifier))
    services.append(DeliverySender(ctx.store, cfg))
    services.append(DeadlineTicker(ctx.store, ctx.clock, cfg.clocks.tick_seconds, cfg))
    services.append(EscalationSender(ctx.store, cfg, ctx.directory, notifier.sms))
    services.append(CalendarWatch(book.calendar, ctx.clock, ctx.published))
    tokens = agency_tokens(ctx, cfg)
    missing = sorted(set(cfg.agencies) - set(tokens))
    if missing:
        log.warning("no answer-API token for agencies: %s", ", ".join(missing))
    DispatchApi(book, tokens, cfg.serve_lookup_page).register(ctx.http)
    return services
