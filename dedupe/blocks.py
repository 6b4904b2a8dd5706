"""Incident decisions of several instances on one store: what a decision locks, and what its window must learn
from the store first.

A decision about a report (join which incident, or open one) reads the window's reports of its district and the
reports with no district (a report with no district: every district's), and writes into its own district. With
SQLite there is one instance per store file and one writer: the window is the whole truth and nothing is locked
or read back (`LocalBlocks`). On PostgreSQL every instance runs the stage with a window of its own
(`SharedBlocks`), so a decision, inside the transaction that writes it:
- takes transaction-level advisory locks that order it after every decision about the same blocks: its
  district's key exclusively and the all-districts key shared; a report without a district (it reads every
  district and writes the reports every district reads) takes the all-districts key exclusively. They are held
  until the decision commits or is undone, and end with the session if the instance dies: no lease to lapse
  between a check and the commit. Decisions about different districts run at once on different instances;
- then reads from the store the reports of those blocks that joined an incident since this instance last looked
  under the same locks (every decision about them since has committed, the lock orders it after), so the
  window it matches against holds everything decided before.
Per district, not per (district, topic): the topics a match searches depend on related topics and on the
alternative topics of the reports in the window, which another instance may just have added to; the district is
known before matching and bounds everything the match reads.

"Since this instance last looked" is a joined_at time, of the clock of whichever instance wrote the join: a
decision ordered after ours joined after our refresh on our clock, and the read goes back SLACK_SECONDS further
for other hosts' clocks, which must agree that closely (NTP keeps them within milliseconds). Not more: every join
of the last SLACK_SECONDS is read back (as ids; only the ones the window lacks in full), at every decision.
"""
from __future__ import annotations

import math
from typing import Protocol

from ingest.errors import TransientError
from ingest.leases import lock_key
from ingest.store import Store, Tx

from . import incidents
from .matcher import IncidentMatcher

SLACK_SECONDS = 10.0
ALL_DISTRICTS = lock_key("dedupe-block:*")


def district_key(district: str) -> int:
    return lock_key(f"dedupe-block:{district}")


class Blocks(Protocol):
    group_commit: bool

    async def rebuild(self, store: Store) -> int: ...
    async def enter(self, tx: Tx, district: str | None) -> None: ...
    async def joined(self, tx: Tx, report_id: int, district: str | None) -> None: ...


class LocalBlocks:
    """One instance and one writer (SQLite): the window is the whole truth."""

    # A batch of jobs finished in one transaction, each match seeing the jobs before it (service.py).
    group_commit = True

    def __init__(self, matcher: IncidentMatcher) -> None:
        self.matcher = matcher

    async def rebuild(self, store: Store) -> int:
        return await self.matcher.rebuild()

    async def enter(self, tx: Tx, district: str | None) -> None:
        return None

    async def joined(self, tx: Tx, report_id: int, district: str | None) -> None:
        return None


class SharedBlocks:
    """Several instances on one PostgreSQL store (see the module's docstring)."""

    # One job a transaction: the locks of one decision are taken in one order (all districts, then the
    # district), and none is held across jobs, so two instances never deadlock on each other's batches.
    group_commit = False

    def __init__(self, matcher: IncidentMatcher) -> None:
        self.matcher = matcher
        self._seen: dict[str | None, float] = {}  # district (None: no district) -> when we last read it, locked
        self._seen_all = -math.inf  # when we last read every district, locked

    async def rebuild(self, store: Store) -> int:
        """The whole window, read while no decision runs anywhere (a few seconds, at start)."""
        async with store.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (ALL_DISTRICTS,))
            self._seen.clear()
            self._seen_all = tx.store.clock.now()
            return await self.matcher.rebuild(reader=tx)

    async def enter(self, tx: Tx, district: str | None) -> None:
        """Lock the blocks a decision about a report of `district` reads, then read what others decided in them."""
        if district is None:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (ALL_DISTRICTS,))
            parts: list[str | None] | None = None
            since = self._seen_all
        else:
            await tx.execute("SELECT pg_advisory_xact_lock_shared(?)", (ALL_DISTRICTS,))
            await tx.execute("SELECT pg_advisory_xact_lock(?)", (district_key(district),))
            parts = [district, None]
            since = min(max(self._seen.get(p, -math.inf), self._seen_all) for p in parts)
        now = tx.store.clock.now()
        await self.matcher.refresh(tx, since - SLACK_SECONDS, parts)
        if parts is None:
            self._seen_all = now
        else:
            for p in parts:
                self._seen[p] = now

    async def joined(self, tx: Tx, report_id: int, district: str | None) -> None:
        """After a report of `district` joined an incident: that incident still has no report of another district.
        Its no-district reports are not under our district's lock, so a report of another district may have
        joined it at the same time; the join's row lock on the incident waited for that one's commit, and this
        read sees it. The decision is then undone and taken again, as it would have been taken after that one."""
        if district is None:
            return
        if not await incidents.open_incidents_of(tx, [report_id], district):
            raise TransientError("the incident took a report of another district meanwhile; deciding again")
