"""The review flow in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright): an operator
logs in, opens the review queue, clicks one decision, and the report leaves the queue with the decision recorded
with who and when."""
from __future__ import annotations


import pytest

from ingest.records import Candidate, Place

from .conftest import PASSWORD, Server, seed_report

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.system("chromium")


async def test_operator_decides_a_review_in_the_browser(server: Server) -> None:
    rid = await seed_report(server.store, text="Nước cống tràn lên đường Điện Biên Phủ sau mưa", status="review",
                            topic="water_supply", agency="sawaco", confidence=0.44, district="binh-thanh",
                            place=Place(district="binh-thanh", street="dien bien phu", source="text"),
                            candidates=(Candidate(topic="water_supply", agency="sawaco", score=0.44),
                                        Candidate(topic="drainage", agency="thoat-nuoc", score=0.41)))
    other = await seed_report(server.store, text="Cây xanh nghiêng sắp đổ", status="review", topic="trees",
                              agency="cay-xanh", confidence=0.5,
                              candidates=(Candidate(topic="trees", agency="cay-xanh", score=0.5),))
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page()
            page.set_default_timeout(10_000)
            await page.goto(f"{server.url}/console/review")
            assert page.url.startswith(f"{server.url}/console/login")  # not logged in yet
            await page.fill("input[name=username]", "operator")
            await page.fill("input[name=password]", PASSWORD)
            await page.click("#login")
            await page.wait_for_url(f"{server.url}/console/review")
            row = page.locator(f"#report-{rid}")
            assert "dien bien phu" in await row.inner_text()
            # The classifier's second candidate is the right one: one click.
            await row.locator("button.decide[data-topic=drainage]").click()
            await page.wait_for_url(f"{server.url}/console/review?done={rid}")
            assert await page.locator(f"#report-{rid}").count() == 0
            assert await page.locator(f"#report-{other}").count() == 1
            assert str(rid) in await page.locator("#flash").inner_text()
            # The report page shows the decision in the report's own history.
            await page.goto(f"{server.url}/console/review/{rid}")
            decisions = await page.locator("#decisions").inner_text()
            assert "operator: route Thoát nước → Công ty TNHH MTV Thoát nước đô thị TP.HCM" in decisions
        finally:
            await browser.close()
    decision = await server.store.fetchone("SELECT actor, at, topic, agency FROM review_decisions WHERE report_id=?",
                                           (rid,))
    assert dict(decision) == {"actor": "operator", "at": server.store.clock.now(), "topic": "drainage",
                              "agency": "thoat-nuoc"}
    row = await server.store.fetchone("SELECT status, agency FROM reports WHERE id=?", (rid,))
    assert (row["status"], row["agency"]) == ("routed", "thoat-nuoc")
