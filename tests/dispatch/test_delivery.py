"""Delivery to agency webhooks and mailboxes against real loopback peers that misbehave."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
from email import message_from_bytes, policy as email_policy
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.smtp import SMTP
from pydantic import ValidationError

from config.dispatch import DispatchConfig
from dispatch.delivery import DeliverySender, replay_deliveries
from dispatch.ssrf import target_problems
from ingest.records import Attachment
from tests.net import serve_app
from tests.stores import (cancel_when, stop_as_the_lease_commits_gives_back,
                          stop_keeps_the_send_in_its_thread)

from .conftest import SECRET_A, SECRET_B, make_book, run_dispatch, seed_report, webhook_cfg


def verify(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """An independent Standard Webhooks verifier, as an agency would write it."""
    key = base64.b64decode(secret.split("_", 1)[1])
    content = headers["webhook-id"].encode() + b"." + headers["webhook-timestamp"].encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    offered = [part.split(",", 1)[1] for part in headers["webhook-signature"].split(" ")]
    return any(hmac.compare_digest(expected, sig) for sig in offered)


async def setup_case(dstore, directory, cfg_agencies: dict[str, Any], n: int = 1, **delivery: Any):
    cfg = DispatchConfig.model_validate({"agencies": cfg_agencies, "delivery": delivery})
    book = make_book(dstore, directory, cfg)
    for i in range(n):
        rid = await seed_report(dstore, incident_id=f"INC-{i + 1:06d}")
        await run_dispatch(dstore, book, rid, f"INC-{i + 1:06d}")
    return cfg, DeliverySender(dstore, cfg)


async def delivery_rows(dstore) -> list[dict[str, Any]]:
    return [dict(r) for r in await dstore.fetchall("SELECT * FROM deliveries ORDER BY id")]


async def test_signed_delivery_verifies_with_both_rotating_secrets(dstore, directory, receiver):
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url, secrets=[SECRET_A, SECRET_B]))
    assert await sender.run_once() == 1
    await sender.close()
    (req,) = receiver.requests
    assert verify(req["headers"], req["body"], SECRET_A)
    assert verify(req["headers"], req["body"], SECRET_B)
    assert not verify(req["headers"], req["body"] + b" ", SECRET_A)
    body = json.loads(req["body"])
    assert body["type"] == "case.created" and body["data"]["case_id"] == "CASE-000001"
    assert (await delivery_rows(dstore))[0]["state"] == "delivered"
    forward = await dstore.fetchone("SELECT state FROM deadlines WHERE kind='forward'")
    assert forward["state"] == "met"


@pytest.mark.parametrize("fault,retry_floor", [("503", 120), ("429", 30), ("500", 0), ("timeout", 0),
                                               ("reset", 0), ("slow_body", 0)])
async def test_transient_faults_retry_with_the_same_webhook_id(dstore, directory, receiver, fclock, fault,
                                                               retry_floor):
    receiver.script = [fault]
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url))
    await sender.run_once()
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "retry"
    assert row["next_at"] - fclock.now() >= retry_floor
    # Not due yet: nothing is sent before the backoff (and Retry-After) has passed.
    assert await sender.run_once() == 0
    fclock.advance(row["next_at"] - fclock.now() + 0.001)
    await sender.run_once()
    await sender.close()
    ids = [r["headers"]["webhook-id"] for r in receiver.requests]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert list(receiver.accepted) == [ids[0]]
    assert (await delivery_rows(dstore))[0]["state"] == "delivered"


async def test_410_disables_the_endpoint_and_replay_reenables(dstore, directory, receiver):
    receiver.script = ["410"]
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url, concurrency=1), n=3)
    await sender.run_once()
    rows = await delivery_rows(dstore)
    assert [r["state"] for r in rows] == ["dead", "dead", "dead"]
    assert len(receiver.requests) == 1  # the two others were never attempted once the endpoint said Gone
    assert await dstore.fetchone("SELECT 1 FROM endpoint_state WHERE agency='sawaco'")
    alert = await dstore.fetchone("SELECT data FROM events WHERE kind='alert'")
    assert json.loads(alert["data"])["alert"] == "endpoint_disabled"
    assert await replay_deliveries(dstore, ids=[rows[1]["id"]]) == 1  # by delivery id, as `dispatch deliveries` lists
    assert [r["state"] for r in await delivery_rows(dstore)] == ["dead", "pending", "dead"]
    assert await replay_deliveries(dstore, agency="thoat-nuoc") == 0
    assert await replay_deliveries(dstore, agency="sawaco") == 2
    await sender.run_once()
    await sender.close()
    assert [r["state"] for r in await delivery_rows(dstore)] == ["delivered"] * 3
    assert set(receiver.accepted) == {r["msg_id"] for r in rows}


async def test_a_deliver_job_whose_payload_does_not_decode_leaves_its_row_dead_with_an_alert(dstore, directory,
                                                                                              receiver):
    """Its lease buries the job without reading it; the row it carried is its endpoint's waiting row no other job
    carries: dead, with the alert a dead delivery raises (it stayed 'pending', no alert, the case timeline saying
    'delivery pending' forever). The other deliveries of the endpoint go out; a replay that buries the job again
    raises no second alert."""
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url), n=3)
    broken, *_ = [r["id"] for r in await dstore.fetchall("SELECT id FROM jobs WHERE stage='deliver' ORDER BY id")]
    async with dstore.transaction() as tx:
        await tx.execute("UPDATE jobs SET payload=? WHERE id=?", ('{"delivery": 1}', broken))
    await sender.run_once()
    assert [r["state"] for r in await delivery_rows(dstore)] == ["dead", "delivered", "delivered"]
    (alert,) = [json.loads(r["data"]) for r in await dstore.fetchall("SELECT data FROM events WHERE kind='alert'")]
    first = (await delivery_rows(dstore))[0]
    assert (alert["alert"], alert["msg_id"], alert["error"]) == ("delivery_dead", first["msg_id"],
                                                                 "payload does not decode")
    assert await dstore.queue.replay(ids=[broken]) == 1
    assert await sender.run_once() == 0
    await sender.close()
    assert len(await dstore.fetchall("SELECT data FROM events WHERE kind='alert'")) == 1
    assert [d.id for d in await dstore.queue.dead_letters("deliver")] == [broken]


async def test_delivery_log_lines_name_an_endpoint_without_its_address(dstore, directory, receiver, fclock, caplog):
    """An endpoint may be named by its mailbox: the log lines about it (failing, dead) name the delivery and the
    endpoint as the dead-letter page shows it, never the address (the 'delivery dead' line logged it as is)."""
    mailbox = "tiepnhan.sawaco@example.vn"
    receiver.script = ["503", "400"]
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url, name=mailbox))
    caplog.set_level("INFO", logger="dispatch.delivery")
    await sender.run_once()
    (row,) = await delivery_rows(dstore)
    fclock.advance(row["next_at"] - fclock.now() + 0.001)
    await sender.run_once()
    await sender.close()
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "dead" and row["target"] == mailbox
    lines = [r.getMessage() for r in caplog.records if r.name == "dispatch.delivery"]
    assert any("failing" in line for line in lines) and any("dead" in line for line in lines), lines
    assert not [line for line in lines if "tiepnhan" in line or "example.vn" in line], lines
    (dead,) = [line for line in lines if "dead" in line]
    assert f"delivery {row['id']} " in dead and "sawaco/[email ẩn]" in dead


@pytest.mark.parametrize("fault", ["400", "redirect"])
async def test_other_4xx_and_redirects_are_permanent(dstore, directory, receiver, fault):
    receiver.script = [fault]
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url))
    await sender.run_once()
    await sender.close()
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "dead"
    assert len(receiver.requests) == 1  # the redirect target was never requested


async def test_dead_letter_after_deadline_then_replay_keeps_the_id(dstore, directory, receiver, fclock):
    receiver.script = ["503"] * 50
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url), deadline_seconds=600)
    for _ in range(20):
        await sender.run_once()
        row = (await delivery_rows(dstore))[0]
        if row["state"] == "dead":
            break
        fclock.advance(max(0.0, row["next_at"] - fclock.now()) + 0.001)
    assert row["state"] == "dead" and "deadline" in row["last_error"]
    assert await dstore.fetchone("SELECT 1 FROM events WHERE kind='alert' AND data LIKE '%delivery_dead%'")
    receiver.script = []
    assert await replay_deliveries(dstore) == 1
    await sender.run_once()
    await sender.close()
    assert {r["headers"]["webhook-id"] for r in receiver.requests} == {row["msg_id"]}
    assert list(receiver.accepted) == [row["msg_id"]]


async def test_each_case_arrives_once_per_id_under_mixed_faults(dstore, directory, receiver, fclock):
    receiver.script = ["503", "reset", "ok", "429", "timeout", "ok", "500", "ok"] * 2
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url, concurrency=3), n=12)
    for _ in range(30):
        await sender.run_once()
        pending = [r for r in await delivery_rows(dstore) if r["state"] != "delivered"]
        if not pending:
            break
        fclock.advance(max(r["next_at"] for r in pending) - fclock.now() + 0.001)
    await sender.close()
    rows = await delivery_rows(dstore)
    assert all(r["state"] == "delivered" for r in rows)
    by_case = {}
    for msg_id, body in receiver.accepted.items():
        by_case.setdefault(body["data"]["case_id"], []).append(msg_id)
    assert len(by_case) == 12 and all(len(v) == 1 for v in by_case.values())
    assert receiver.max_in_flight <= 3


async def test_concurrency_limit_per_endpoint(dstore, directory, receiver):
    receiver.delay = 0.05
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url, concurrency=2), n=8)
    await sender.run_once()
    await sender.close()
    assert len(receiver.accepted) == 8
    assert receiver.max_in_flight == 2


def refusing(cfg: DispatchConfig) -> DispatchConfig:
    """The same config with the guard on: as if the endpoint's address turned private after the config was
    checked (DNS rebinding), since a config naming a private address no longer validates."""
    target = cfg.agencies["sawaco"].targets[0].model_copy(update={"allow_private": False})
    return cfg.model_copy(update={"agencies": {"sawaco": cfg.agencies["sawaco"].model_copy(
        update={"targets": [target]})}})


async def test_ssrf_guard_refuses_loopback_without_explicit_allowance(dstore, directory, receiver):
    cfg, _ = await setup_case(dstore, directory, webhook_cfg(receiver.url))
    sender = DeliverySender(dstore, refusing(cfg))
    await sender.run_once()
    await sender.close()
    (row,) = await delivery_rows(dstore)
    # Dead after one attempt (with an alert), not retried for the three-day delivery deadline.
    assert row["state"] == "dead" and "SSRF" in row["last_error"] and row["attempts"] == 1
    assert receiver.requests == []


async def test_ssrf_guard_checks_resolved_names(dstore, directory, receiver):
    cfg, _ = await setup_case(dstore, directory, webhook_cfg(receiver.url.replace("127.0.0.1", "localhost")))
    sender = DeliverySender(dstore, refusing(cfg))
    await sender.run_once()
    await sender.close()
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "dead" and row["attempts"] == 1
    assert receiver.requests == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://10.1.2.3/hook", "http://[::1]/hook",
                                 "http://169.254.169.254/latest/meta-data", "https://localhost/hook",
                                 "http://api.localhost/hook", "http://[::ffff:192.168.1.5]/hook"])
def test_a_private_target_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ValidationError, match="SSRF guard"):
        DispatchConfig.model_validate({"agencies": webhook_cfg(url, allow_private=False)})
    with pytest.raises(ValidationError, match="SSRF guard"):
        DispatchConfig.model_validate({"sms": {"url": url}})
    DispatchConfig.model_validate({"agencies": webhook_cfg(url, allow_private=True)})  # said explicitly: allowed


def test_a_name_resolving_to_a_private_address_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    # No DNS here: the resolver's answer is the one part stood in for.
    answers = {"hooks.sawaco.example": "10.0.0.7", "api.example.vn": "203.113.131.1"}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port: [(0, 0, 0, "", (answers[host], 0))])
    cfg = DispatchConfig.model_validate({"agencies": {
        **webhook_cfg("https://hooks.sawaco.example/1022", allow_private=False),
        **webhook_cfg("https://api.example.vn/1022", agency="thoat-nuoc", allow_private=False)}})
    assert target_problems(cfg) == [
        "dispatch.agencies.sawaco.targets[0].url: hooks.sawaco.example resolves to a non-public address (10.0.0.7)"
        " (SSRF guard)"]


class Sink:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []
        self.reply = "250 OK"
        # When set, a message is taken (in `messages`) and its answer held until the gate opens: a stop lands there.
        self.gate: asyncio.Event | None = None
        self.taken = asyncio.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd hook name
        if self.reply.startswith("250"):
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        if self.gate is not None:
            self.taken.set()
            await self.gate.wait()
        return self.reply


@pytest.fixture
async def smtp_sink():
    """A real SMTP server on the test's own loop (aiosmtpd's SMTP protocol, as the daemon runs it)."""
    sink = Sink()
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(sink, hostname="sink.test"),
                                                            "127.0.0.1", 0)
    yield sink, server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()


async def test_email_target_with_attachment_text_and_html(dstore, directory, smtp_sink):
    sink, port = smtp_sink
    photo = b"\x89PNG fake photo bytes"
    digest = await dstore.put_blob(photo, "image/png")
    cfg = DispatchConfig.model_validate({
        "agencies": {"sawaco": {"targets": [{"kind": "email", "to": ["dieuhanh@sawaco.example.vn"]}]}},
        "smtp": {"host": "127.0.0.1", "port": port, "reply_to": "1022-tra-loi@example.vn"}})
    book = make_book(dstore, directory, cfg)
    rid = await seed_report(dstore, attachments=(Attachment(sha256=digest, content_type="image/png",
                                                            size=len(photo), filename="ong-nuoc.png"),))
    await run_dispatch(dstore, book, rid, "INC-000001")
    sender = DeliverySender(dstore, cfg)
    sink.reply = "451 4.3.0 try later"
    await sender.run_once()
    assert (await delivery_rows(dstore))[0]["state"] == "retry"
    sink.reply = "250 OK"
    dstore.clock.advance(4000)
    await sender.run_once()
    await sender.close()
    ((mail_from, rcpts, raw),) = sink.messages
    assert rcpts == ["dieuhanh@sawaco.example.vn"]
    msg = message_from_bytes(raw, policy=email_policy.default)
    assert msg["Auto-Submitted"] == "auto-generated"
    assert "[1022 #CASE-000001]" in msg["Subject"]
    row = (await delivery_rows(dstore))[0]
    assert msg["Message-ID"] == f"<{row['msg_id']}@1022.tphcm.gov.vn>"
    assert "Ống nước bể" in msg.get_body(("plain",)).get_content()
    assert "<html>" in msg.get_body(("html",)).get_content()
    (att,) = list(msg.iter_attachments())
    assert att.get_filename() == "ong-nuoc.png" and att.get_content() == photo


async def test_a_sender_stopped_mid_send_waits_for_its_smtp_thread_and_the_mail_goes_once(dstore, directory,
                                                                                          smtp_sink):
    """A stop while the relay holds an agency's mail (its DATA taken, the 250 not yet read): smtplib's thread
    cannot be cancelled and goes on talking to the relay. The delivery is not given back meanwhile (given back, the
    next sender, a SIGHUP reload's or another instance's, could lease it and send the same mail at the same time):
    it stays leased, another sender finds nothing to send, and once the relay answers it is recorded delivered and
    went once in all."""
    sink, port = smtp_sink
    cfg = DispatchConfig.model_validate({
        "agencies": {"sawaco": {"targets": [{"kind": "email", "to": ["dieuhanh@sawaco.example.vn"]}]}},
        "smtp": {"host": "127.0.0.1", "port": port}})
    book = make_book(dstore, directory, cfg)
    await run_dispatch(dstore, book, await seed_report(dstore), "INC-000001")
    sender, other = DeliverySender(dstore, cfg), DeliverySender(dstore, cfg)

    await stop_keeps_the_send_in_its_thread(dstore, "deliver", sender.run_once, other.run_once, sink)
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "delivered"
    assert await other.run_once() == 0
    assert len(sink.messages) == 1
    await sender.close()
    await other.close()


async def test_sender_survives_concurrent_run(dstore, directory, receiver):
    """Two sender loops never send one row twice (the lease is taken in a transaction)."""
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url), n=5)
    await asyncio.gather(sender.run_once(), sender.run_once())
    await sender.close()
    assert len(receiver.requests) == 5


async def test_a_sender_stopped_while_its_lease_commits_gives_the_deliveries_back(dstore, directory, receiver):
    """A stop that lands while the sender's lease commits (the commit goes on whatever the cancellation does): the
    deliveries it took are due again at once, not leased to nobody until their leases expire."""
    _, sender = await setup_case(dstore, directory, webhook_cfg(receiver.url), n=2)

    await stop_as_the_lease_commits_gives_back(dstore, "deliver", sender.run_once, 2)
    await sender.close()
    assert receiver.requests == []


async def test_a_sender_stopped_mid_send_gives_the_delivery_back_and_it_goes_again_under_its_webhook_id(dstore,
                                                                                                         directory):
    """A stop while the agency holds the webhook (received, its 2xx never read by us): the delivery is due again at
    once, not leased to nobody for up to `delivery.lease_seconds`; the next run delivers it once, under the
    webhook-id of the first attempt, which the agency dedupes on."""
    received, answer = asyncio.Event(), asyncio.Event()
    ids: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        ids.append(request.headers["webhook-id"])
        if len(ids) == 1:
            received.set()
            await answer.wait()
        return web.json_response({"ok": True})

    async def jobs() -> list[tuple[str, int, float | None]]:
        rows = await dstore.fetchall("SELECT state, attempts, lease_until FROM jobs WHERE stage='deliver'")
        return [(r["state"], r["attempts"], r["lease_until"]) for r in rows]

    app = web.Application()
    app.router.add_post("/hook", hook)
    async with serve_app(app) as base:
        _, sender = await setup_case(dstore, directory, webhook_cfg(f"{base}/hook"))
        try:
            await cancel_when(sender.run_once, received)
            assert await jobs() == [("ready", 0, None)]
        finally:
            answer.set()  # the held request ends (a failing test ends at once, not at the server's shutdown)
        assert await sender.run_once() == 1
        await sender.close()
    (row,) = await delivery_rows(dstore)
    assert row["state"] == "delivered" and ids == [row["msg_id"]] * 2
    assert [state for state, _, _ in await jobs()] == ["done"]


async def test_an_outbox_written_before_the_one_queue_is_delivered_after_the_upgrade(tmp_path, fclock, directory,
                                                                                      receiver):
    """A store whose `deliveries` were leased by the old sender (dispatch schema 3): the migration gives every row
    not yet delivered its `deliver` job, with its attempts, deadline and dead letter, and they go out once."""
    from dedupe.schema import MIGRATIONS as DEDUPE_MIGRATIONS
    from dispatch.schema import MIGRATIONS
    from ingest.store import Store

    # Schema 3 plus the later migrations this test's current code writes through (the case's recurrence link, 6),
    # which the queue's migrations (4, 5) do not depend on: those still run at the upgrade below.
    old = {"dedupe": DEDUPE_MIGRATIONS, "dispatch": [m for m in MIGRATIONS if m[0] <= 3 or m[0] >= 6]}
    store = await Store.open(tmp_path / "old.sqlite3", tmp_path / "blobs", clock=fclock, migrations=old)
    cfg = DispatchConfig.model_validate({"agencies": webhook_cfg(receiver.url)})
    book = make_book(store, directory, cfg)
    for i in range(5):
        rid = await seed_report(store, incident_id=f"INC-{i + 1:06d}")
        await run_dispatch(store, book, rid, f"INC-{i + 1:06d}")
    now = fclock.now()
    async with store.transaction() as tx:  # what the old sender left: no deliver jobs, its own lease columns
        await tx.execute("DELETE FROM jobs WHERE stage='deliver'")
        for did, state, attempts, lease, error in ((1, "pending", 0, None, None), (2, "retry", 2, None, "HTTP 503"),
                                                   (3, "sending", 1, now - 1, None), (4, "dead", 7, None, "HTTP 400"),
                                                   (5, "delivered", 1, None, None)):
            await tx.execute("UPDATE deliveries SET state=?, attempts=?, lease_until=?, last_error=?, next_at=?"
                             " WHERE id=?", (state, attempts, lease, error, now, did))
    await store.close()

    store = await Store.open(tmp_path / "old.sqlite3", tmp_path / "blobs", clock=fclock,
                             migrations={"dedupe": DEDUPE_MIGRATIONS, "dispatch": MIGRATIONS})
    try:
        jobs = {json.loads(r["payload"])["delivery_id"]: dict(r) for r in await store.fetchall(
            "SELECT state, attempts, subject, last_error, deadline_at, payload FROM jobs WHERE stage='deliver'")}
        assert sorted(jobs) == [1, 2, 3, 4]
        assert [jobs[i]["state"] for i in (1, 2, 3, 4)] == ["ready", "ready", "leased", "dead"]
        assert jobs[2]["attempts"] == 2 and jobs[4]["last_error"] == "HTTP 400"
        assert jobs[1]["subject"] == "sawaco/main" and jobs[1]["deadline_at"] is not None
        assert await store.queue.reclaim_expired() == 1  # the send cut short by the old daemon's end
        sender = DeliverySender(store, cfg)
        assert await sender.run_once() == 3
        assert await replay_deliveries(store) == 1  # the old dead letter replays like any other
        assert await sender.run_once() == 1
        await sender.close()
        states = [r["state"] for r in await store.fetchall("SELECT state FROM deliveries ORDER BY id")]
        assert states == ["delivered"] * 5
        assert len(receiver.accepted) == 4  # the one delivered before the upgrade is not sent again
    finally:
        await store.close()
