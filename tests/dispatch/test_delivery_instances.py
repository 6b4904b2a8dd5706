"""Two instances on one PostgreSQL database: the lease that buries a `deliver` job whose payload does not decode gives
up the outbox row that job carried, and only that one (as tests/dispatch/test_escalation_instances.py shows for a
digest). The endpoint's jobs and its waiting rows were read by two statements: a case another instance routed to the
endpoint in between (row and job in one commit) looked carried by no job, and was marked dead with a false
`delivery_dead` alert while its own job went on to send it."""
from __future__ import annotations

import json
import secrets
from collections.abc import Callable

import pytest

from dispatch.delivery import enqueue_delivery
from ingest.jobs import DELIVER
from ingest.pgstore import PgStore

AGENCY, TARGET = "sawaco", "hook"


async def routed(store: PgStore, n: int) -> tuple[int, int]:
    """A case and what dispatch/cases.py commits for it towards one endpoint: the outbox row and its job, together.
    Returns (delivery id, job id)."""
    async with store.transaction() as tx:
        now = store.clock.now()
        case_id = f"CASE-{n:06d}"
        await tx.execute("INSERT INTO cases(id, incident_id, report_id, token, topic, category, agency, state,"
                         " received_at, forwarded_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                         (case_id, f"INC-{n:06d}", n, secrets.token_hex(8), "water", "2", AGENCY, "forwarded",
                          now, now, now, now))
        row = await tx.fetchone(
            "INSERT INTO deliveries(msg_id, case_id, agency, target, kind, event, payload, state, next_at,"
            " deadline_at, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
            (f"msg_{n}", case_id, AGENCY, TARGET, "webhook", "case.created", "{}", "pending", now, now + 86400, now,
             now))
        await enqueue_delivery(tx, int(row["id"]), AGENCY, TARGET, now + 86400)
    job = await store.fetchone("SELECT MAX(id) AS id FROM jobs WHERE stage=?", (DELIVER,))
    return int(row["id"]), int(job["id"])


async def test_an_undecodable_deliver_job_kills_its_own_row_not_one_another_instance_just_routed(
        two: tuple[PgStore, PgStore], monkeypatch: pytest.MonkeyPatch,
        after_subject_read: Callable[..., list[int]]) -> None:
    a, b = two
    old, old_job = await routed(a, 1)
    async with a.transaction() as tx:  # written by a newer build: it does not decode here
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?",
                         (json.dumps({"type": "DeliverJob", "schema_version": 99, "delivery_id": old}), old_job))
    # Instance a routes its next case to the endpoint right after b's burying lease read the endpoint's jobs.
    written = after_subject_read(b, lambda: routed(a, 2))
    assert await b.queue.lease(DELIVER, 64, 60.0) == []  # the one due job buried, its row dead
    monkeypatch.undo()
    (new,) = written
    states = {r["id"]: r["state"] for r in await b.fetchall("SELECT id, state FROM deliveries")}
    assert states == {old: "dead", new: "pending"}  # before: the new one dead too, and sent all the same
    alerts = [json.loads(r["data"]) for r in await b.fetchall("SELECT data FROM events WHERE kind='alert'")]
    assert [(x["alert"], x["msg_id"]) for x in alerts] == [("delivery_dead", "msg_1")]
    assert [j.payload.delivery_id for j in await a.queue.lease(DELIVER, 64, 60.0)] == [new]
