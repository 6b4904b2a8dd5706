"""The standing adversarial suite (issue 17, item 7): property-based fuzzing of every parser and intake endpoint.

Properties, for a few thousand generated inputs in all (bench/bench_fuzz.py runs 100,000 and more, and measures
the event loop's lag meanwhile):
- a parser either returns a record that can be stored (valid Unicode all through) or raises its own refusal type,
  never anything else;
- an endpoint answers only 2xx or 4xx (SMTP: never our-fault 421/451), never a 5xx or a trace;
- nothing acknowledged is lost: every 2xx (SMTP 250) names a report that is in the store.
Runs are derandomized so CI is reproducible; the bench explores with fresh randomness.
"""
from __future__ import annotations

import asyncio
import http.client
import json
import smtplib
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from channels.email_parse import ParseError, parse_email, to_inbound as email_inbound
from channels.messenger_parse import BadPayload, parse_webhook, to_inbound as messenger_inbound
from channels.open311_parse import Open311Error, parse_request
from channels.telegram_parse import BadUpdate, parse_update
from channels.transcripts_parse import TranscriptError, parse_transcript
from ingest.records import InboundMessage, to_json
from ingest.untrusted import BodyError, check_tree
from tests import fuzz_strategies as fs
from tests.channels.fakes.fake_graph_api import sign

CODES = {"drainage", "street_lighting", "road_damage"}
APP_SECRET = "fuzz-app-secret"
RCPT = "1022@fuzz.test"


def fuzz(n: int) -> Any:
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def storable(message: InboundMessage) -> None:
    """What the store will do with the record: encode it (and its text fields) as UTF-8."""
    to_json(message).encode("utf-8")
    for value in (message.idempotency_key, message.channel_instance, message.external_id or ""):
        value.encode("utf-8")


# -- pure parsers -----------------------------------------------------------------------------------------
@fuzz(500)
@given(fs.open311_body())
def test_open311_parser_returns_a_storable_record_or_refuses(body: tuple[bytes, str]) -> None:
    raw, content_type = body
    try:
        parsed = parse_request(raw, content_type, idempotency_key=None, received_at="2026-09-01T08:00:00+07:00",
                               service_codes=CODES, channel_instance="app", max_photos=3)
    except Open311Error as exc:
        assert 400 <= exc.code < 500 and exc.description
        return
    storable(parsed.message)
    for field in (parsed.message.reporter.name, parsed.message.reporter.email, parsed.message.reporter.phone):
        assert field is None or ("\r" not in field and "\n" not in field)


@fuzz(400)
@given(fs.mutated_email())
def test_email_parser_returns_a_storable_record_or_refuses(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except ParseError as exc:
        assert exc.reason
        return
    storable(email_inbound(parsed, channel_instance="mx", received_at="2026-09-01T08:00:00+07:00"))
    assert parsed.subject is None or ("\r" not in parsed.subject and "\n" not in parsed.subject)


@fuzz(150)
@given(fs.messenger_body())
def test_messenger_parser_returns_storable_events_or_refuses(raw: bytes) -> None:
    try:
        batch = parse_webhook(raw)
    except BadPayload as exc:
        assert str(exc)
        return
    for event in batch.events:
        storable(messenger_inbound(event, instance="page", now=1_790_000_000.0))


@fuzz(250)
@given(fs.telegram_update)
def test_telegram_update_parser_returns_or_refuses(update: dict) -> None:
    try:
        check_tree(update)
        parse_update(update, max_photo_bytes=1 << 20)
    except (BadUpdate, BodyError):
        return


@fuzz(300)
@given(fs.transcript_raw)
def test_transcript_parser_returns_a_storable_record_or_refuses(raw: bytes) -> None:
    try:
        message = parse_transcript(raw, filename="call.json", channel_instance="cc",
                                   default_received_at="2026-09-01T08:00:00+07:00")
    except TranscriptError as exc:
        assert str(exc)
        return
    storable(message)


# -- endpoints: the daemon's own server on loopback, in a thread of its own ----------------------------------
@dataclass
class Hosted:
    http_port: int
    smtp_port: int
    db: Path

    def stored(self, sql: str, params: tuple = ()) -> list[tuple]:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def hosted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosted]:
    from aiohttp import web

    from channels import messenger, open311, smtp
    from config.channels import ChannelEntry, MessengerOptions, Open311Options, SmtpOptions
    from config.directory import load_directory
    from config.schema import HttpLimits, Settings
    from ingest.app import AppContext
    from ingest.http import make_app
    from ingest.limits import GuardedSite
    from ingest.store import Store
    from ops import health

    tmp = tmp_path_factory.mktemp("fuzz")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fuzz-server", daemon=True)
    thread.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    async def start() -> tuple[Any, Any, Any, Hosted]:
        store = await Store.open(tmp / "store.sqlite3", tmp / "blobs",
                                 migrations={messenger.COMPONENT: messenger.MIGRATIONS})
        ctx = AppContext(settings=Settings(), directory=load_directory(None), store=store, clock=store.clock,
                         http=make_app(1 << 20, HttpLimits()))
        open311.build(ctx, ChannelEntry(kind="open311", name="app"), Open311Options())
        messenger.build(ctx, ChannelEntry(kind="messenger", name="page"), MessengerOptions(
            app_secret=APP_SECRET, page_token="t", verify_token="v", graph_base_url="http://127.0.0.1:9",
            media_budget_seconds=0.05))
        mail = smtp.build(ctx, ChannelEntry(kind="smtp", name="mx"), SmtpOptions(port=0, recipients=[RCPT]))
        health.add_routes(ctx, timeout=2.0)
        runner = web.AppRunner(ctx.http)
        await runner.setup()
        site = GuardedSite(runner, "127.0.0.1", 0, max_connections=100, header_timeout=10)
        await site.start()
        smtp_task = asyncio.ensure_future(mail.run())
        await mail.started.wait()
        return store, runner, smtp_task, Hosted(site.port, mail.port, tmp / "store.sqlite3")

    store, runner, smtp_task, hosted = run(start())
    try:
        yield hosted
    finally:
        async def stop() -> None:
            smtp_task.cancel()
            await asyncio.gather(smtp_task, return_exceptions=True)
            await runner.cleanup()
            await store.close()
        run(stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@fuzz(250)
@given(body=fs.open311_body(), key=st.one_of(st.none(), st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), min_size=1, max_size=20)))
def test_open311_endpoint_answers_2xx_or_4xx_and_loses_nothing(hosted: Hosted, body: tuple[bytes, str],
                                                               key: str | None) -> None:
    raw, content_type = body
    headers = {"Content-Type": content_type} if content_type else {}
    if key is not None:
        headers["Idempotency-Key"] = key
    status, answer = _post(hosted.http_port, "/open311/v2/requests.json", raw, headers)
    assert status < 500 and b"Traceback" not in answer, (status, answer[:300])
    if status in (200, 201):
        report_id = int(json.loads(answer)[0]["service_request_id"])
        assert hosted.stored("SELECT 1 FROM reports WHERE id=?", (report_id,)), report_id


@fuzz(100)
@given(fs.messenger_body())
def test_messenger_webhook_answers_2xx_or_4xx_and_loses_nothing(hosted: Hosted, raw: bytes) -> None:
    status, answer = _post(hosted.http_port, "/webhooks/messenger/page", raw,
                           {"Content-Type": "application/json", "X-Hub-Signature-256": sign(APP_SECRET, raw)})
    assert status < 500 and b"Traceback" not in answer, (status, answer[:300])
    if status == 200:
        for event in parse_webhook(raw).events:
            assert hosted.stored("SELECT 1 FROM reports WHERE channel='messenger' AND idem_key=?", (event.mid,))


@fuzz(100)
@given(fs.mutated_email())
def test_smtp_never_answers_our_fault_and_loses_nothing(hosted: Hosted, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", hosted.smtp_port, timeout=60) as client:
        client.ehlo()
        client.mail("fuzz@example.vn")
        client.rcpt(RCPT)
        try:
            code, reply = client.data(raw)
        except smtplib.SMTPDataError as exc:
            code, reply = exc.smtp_code, exc.smtp_error
    assert code not in (421, 451) and (code == 250 or 500 <= code < 600), (code, reply)
    if code == 250 and b"Accepted as report" in reply:
        report_id = int(reply.rsplit(b" ", 1)[1])
        assert hosted.stored("SELECT 1 FROM reports WHERE id=?", (report_id,))
