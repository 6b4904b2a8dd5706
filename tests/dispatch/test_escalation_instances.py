"""Two instances on one PostgreSQL database: the lease that buries an `escalate` job whose payload does not decode gives
up the digest that job carried, and only that one. Under READ COMMITTED each statement sees what was committed when
it began: the jobs of the subject were read by one statement and its pending digests by the next, so a digest another
instance wrote (row and job in one commit) between the two looked carried by no job, and was marked failed with a
false `escalation_dead` alert while its own job went on to send it."""
from __future__ import annotations

import json
from collections.abc import Callable

import pytest

import dispatch.clocks  # noqa: F401  (registers the escalate kind's hooks)
from ingest.jobs import ESCALATE, EscalateJob
from ingest.pgstore import PgStore

SUBJECT = "sawaco/sms"


async def digest(store: PgStore) -> tuple[int, int]:
    """What dispatch.clocks.write_digests commits for one agency and channel: the row and its job, together."""
    async with store.transaction() as tx:
        now = store.clock.now()
        row = await tx.fetchone("INSERT INTO escalations(agency, level, channel, recipient, items, next_at, created_at)"
                                " VALUES (?,?,?,?,?,?,?) RETURNING id",
                                ("sawaco", "breach", "sms", "0900000000",
                                 json.dumps([{"case_id": None, "report_id": None, "kind": "fix", "due_at": now}]),
                                 now, now))
        job = await tx.enqueue(ESCALATE, None, EscalateJob(escalation_id=int(row["id"])), subject=SUBJECT)
    return int(row["id"]), job


async def test_an_undecodable_escalate_job_gives_up_its_own_digest_not_one_another_instance_just_wrote(
        two: tuple[PgStore, PgStore], monkeypatch: pytest.MonkeyPatch,
        after_subject_read: Callable[..., list[int]]) -> None:
    a, b = two
    old, old_job = await digest(a)
    async with a.transaction() as tx:  # written by a newer build: it does not decode here
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?",
                         (json.dumps({"type": "EscalateJob", "schema_version": 99, "escalation_id": old}), old_job))
    # Instance a commits its next digest of the subject right after b's burying lease read the subject's jobs.
    written = after_subject_read(b, lambda: digest(a))
    assert await b.queue.lease(ESCALATE, 64, 60.0) == []  # the one due job buried, its digest given up
    monkeypatch.undo()
    (new,) = written
    states = {r["id"]: r["state"] for r in await b.fetchall("SELECT id, state FROM escalations")}
    assert states == {old: "failed", new: "pending"}  # before: the new one failed too, and was sent all the same
    alerts = [json.loads(r["data"]) for r in await b.fetchall("SELECT data FROM events WHERE kind='alert'")]
    assert [(x["alert"], x["escalation_id"]) for x in alerts] == [("escalation_dead", old)]
    assert [j.payload.escalation_id for j in await a.queue.lease(ESCALATE, 64, 60.0)] == [new]
