"""The whole daemon, end to end, as a subprocess on loopback: an app report and a call-centre transcript of the
same fallen tree reach the tree agency once (signed webhook), the agency closes the case through its API, both
reporters get the result by SMS, and the public Open311 view shows the report closed without personal data.
"""
from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from dispatch.cases import public_ref

from tests.daemon import Daemon, query, toml_str, wait_for
from tests.net import free_port
from tests.test_e2e_support import (SMS_TOKEN, WEBHOOK_SECRET, base_config, drop_transcript, start_sink,
                                    verify_standard_webhook)

AGENCY_TOKEN = "cay-xanh-e2e-token"
APP_PHONE, APP_NAME = "0909123456", "Trần Thị Bích"
CALL_PHONE, CALL_NAME = "0918765432", "Lê Văn Cường"
# Lê Lợi, Quận 1 (between Nguyễn Huệ and Pasteur).
LAT, LON = 10.7740, 106.7010
FLOW_TIMEOUT = 90.0

# A resolved infrastructure case carries a photo of the site (Art. 7.1): a tiny JPEG header is enough here.
SITE_PHOTO = {"content_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}


def write_config(tmp: Path, port: int, webhook_url: str, sms_url: str) -> Path:
    config = tmp / "config.toml"
    config.write_text(base_config(tmp, port) + f"""
[[channels]]
kind = "open311"
name = "app"

[[channels]]
kind = "transcripts"
name = "call-centre"
folder = {toml_str(tmp / 'transcripts')}
poll_seconds = 0.2

[dispatch.sms]
url = {toml_str(sms_url)}
token = "env:E2E_SMS_TOKEN"
allow_private = true

[[dispatch.agencies.cay-xanh.targets]]
kind = "webhook"
name = "main"
url = {toml_str(webhook_url)}
secrets = ["env:E2E_WHSEC"]
timeout_seconds = 5.0
allow_private = true

[secrets]
"agency.cay-xanh" = "env:E2E_AGENCY_TOKEN"
""", encoding="utf-8")
    return config


@pytest.mark.timeout(400)
async def test_report_to_agency_to_result_for_every_reporter(tmp_path: Path) -> None:
    webhook, webhook_runner = await start_sink("/hook")
    sms, sms_runner = await start_sink("/send", token=SMS_TOKEN)
    port = free_port()
    daemon = Daemon(write_config(tmp_path, port, webhook.url, sms.url), port, tmp_path / "daemon.log",
                    env={"E2E_SMS_TOKEN": SMS_TOKEN, "E2E_WHSEC": WEBHOOK_SECRET, "E2E_AGENCY_TOKEN": AGENCY_TOKEN})
    db = tmp_path / "store.sqlite3"
    daemon.start()
    try:
        await daemon.wait_ready()
        async with aiohttp.ClientSession() as http:
            # 1. The app report.
            async with http.post(f"{daemon.base}/open311/v2/requests.json", json={
                "service_code": "trees", "lat": LAT, "long": LON, "first_name": "Bích", "last_name": "Trần Thị",
                "phone": APP_PHONE,
                "description": "Cây xanh bật gốc đổ chắn ngang đường Lê Lợi, Quận 1, xe máy không đi qua được.",
            }) as resp:
                assert resp.status == 201, await resp.text()
                app_id = int((await resp.json())[0]["service_request_id"])

            # 2. The agency receives one signed webhook for the new case.
            async def delivered() -> bool:
                return bool(webhook.requests)
            await wait_for(delivered, FLOW_TIMEOUT, "no webhook reached the tree agency; log:\n{log}", log=daemon.log)
            first = webhook.requests[0]
            assert verify_standard_webhook(WEBHOOK_SECRET, first["headers"], first["body"])
            assert not verify_standard_webhook("whsec_" + "A" * 44, first["headers"], first["body"])
            event = json.loads(first["body"])
            data = event["data"]
            assert event["type"] == "case.created"
            assert (data["agency"], data["topic"], data["district"]) == ("cay-xanh", "trees", "quan-1")
            assert "Lê Lợi" in data["text"]
            case_id = data["case_id"]
            (app_row,) = query(db, "SELECT status, incident_id FROM reports WHERE id=?", (app_id,))
            assert app_row["status"] == "dispatched"
            incident = app_row["incident_id"]

            # 3. The same fallen tree, phoned in: a duplicate of the incident, not a second case.
            drop_transcript(tmp_path / "transcripts", "call-0001.json", {
                "call_id": "CC-E2E-0001",
                "reporter": {"name": CALL_NAME, "phone": CALL_PHONE},
                "text": "Alo tổng đài, cây xanh to bị bật gốc ngã chắn ngang đường Lê Lợi quận 1, "
                        "xe cộ không qua được, nhờ cho người tới cưa dọn giúp.",
                "lat": LAT + 0.0003, "lon": LON - 0.0002,
            })

            async def call_settled() -> list[object]:
                rows = query(db, "SELECT r.id, r.status, r.incident_id FROM reports r JOIN notifications n"
                                 " ON n.report_id=r.id WHERE r.channel='phone'")
                return rows
            (call_row,) = await wait_for(call_settled, FLOW_TIMEOUT, "the transcript was not handled; log:\n{log}",
                                         log=daemon.log)
            call_id = call_row["id"]
            assert (call_row["status"], call_row["incident_id"]) == ("duplicate", incident)
            assert (tmp_path / "transcripts" / "done" / "call-0001.json").exists()
            assert [r["n"] for r in query(db, "SELECT COUNT(*) AS n FROM cases")] == [1]
            assert [r["n"] for r in query(db, "SELECT COUNT(*) AS n FROM deliveries")] == [1]
            assert len({r["headers"]["webhook-id"] for r in webhook.requests}) == 1

            # 4. The agency closes the case through its API.
            answer_url = f"{daemon.base}/api/v1/agency/cases/{case_id}/answers"
            async with http.post(answer_url, json={"kind": "resolved", "note": "Đã cưa dọn cây, thông đường.",
                                                   "photos": [SITE_PHOTO]},
                                 headers={"Authorization": "Bearer wrong-token"}) as resp:
                assert resp.status == 401
            async with http.post(answer_url, json={"kind": "resolved", "note": "Đã cưa dọn cây, thông đường.",
                                                   "photos": [SITE_PHOTO]},
                                 headers={"Authorization": f"Bearer {AGENCY_TOKEN}",
                                          "Idempotency-Key": "answer-1"}) as resp:
                assert resp.status == 201, await resp.text()
                assert (await resp.json())["state"] == "resolved"

            # 5. Both reporters get the result by SMS, with the lookup link.
            (token,) = [r["token"] for r in query(db, "SELECT token FROM cases WHERE id=?", (case_id,))]
            link = f"{daemon.base}/cases/{token}"

            async def results() -> dict[str, str]:
                found = {b["to"]: b["text"] for b in sms.bodies() if "xử lý xong" in b["text"]}
                return found if len(found) == 2 else {}
            texts = await wait_for(results, FLOW_TIMEOUT, "result SMS missing; log:\n{log}", log=daemon.log)
            assert set(texts) == {APP_PHONE, CALL_PHONE}
            # Each reporter's message carries their own lookup token (their rating and dispute are theirs alone),
            # and the case's public reference, never the sequential internal id.
            own = {r["report_id"]: f"{daemon.base}/cases/{r['token']}"
                   for r in query(db, "SELECT report_id, token FROM reporter_links")}
            links = {APP_PHONE: own[app_id], CALL_PHONE: own[call_id]}
            ref = public_ref(token)
            for phone, text in texts.items():
                assert ref in text and links[phone] in text and case_id not in text
            # Before that, the first reporter got the acknowledgement with the agency, the second was told the
            # incident is already being handled.
            by_phone: dict[str, list[str]] = {}
            for body in sms.bodies():
                by_phone.setdefault(body["to"], []).append(body["text"])
            assert any("đã tiếp nhận" in t and links[APP_PHONE] in t for t in by_phone[APP_PHONE]), by_phone
            assert any("đã được tiếp nhận trước đó" in t and ref in t for t in by_phone[CALL_PHONE]), by_phone
            assert len(by_phone[APP_PHONE]) == len(by_phone[CALL_PHONE]) == 2
            # Still one delivery to the agency, and the link shows the closed case.
            assert len({r["headers"]["webhook-id"] for r in webhook.requests}) == 1
            async with http.get(f"{daemon.base}/api/v1/cases/{token}") as resp:
                assert resp.status == 200
                assert (await resp.json())["state"] == "resolved"

            # 6. The public Open311 view: closed, and nothing about who reported it.
            for report_id, phone, name in ((app_id, APP_PHONE, APP_NAME), (call_id, CALL_PHONE, CALL_NAME)):
                async with http.get(f"{daemon.base}/open311/v2/requests/{report_id}.json") as resp:
                    assert resp.status == 200
                    raw = await resp.text()
                (item,) = json.loads(raw)
                assert item["status"] == "closed"
                assert item["service_code"] == "trees"
                for secret in (phone, name, name.split()[-1]):
                    assert secret not in raw
        assert daemon.stop() == 0
    finally:
        daemon.stop()
        await webhook_runner.cleanup()
        await sms_runner.cleanup()
