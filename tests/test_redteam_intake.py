"""Red-team intake probes through the real Open311 endpoint of the daemon's app (aiohttp on loopback, real
SQLite): hostile bodies get a 4xx, are kept in quarantine, and a good report sent at the same time is stored."""
from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ingest.app import AppContext
from tests.inprocess import running_daemon

CONFIG = """
[[channels]]
kind = "open311"
name = "app"
"""
URL = "/open311/v2/requests.json"
GOOD = {"service_code": "water_supply", "description": "Ống nước bể trên đường Lê Lợi, Quận 1",
        "address_string": "Lê Lợi, Quận 1"}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[tuple[AppContext, str]]:
    async with running_daemon(tmp_path, CONFIG) as (ctx, base, _):
        yield ctx, base


def multipart(parts: list[tuple[str, str, str]], boundary: str = "rtb") -> bytes:
    """(name, headers-extra, value) -> a multipart/form-data body written by hand (clients would fix it up)."""
    out = []
    for name, extra, value in parts:
        out.append(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n{extra}\r\n{value}\r\n")
    out.append(f"--{boundary}--\r\n")
    return "".join(out).encode("utf-8", "surrogatepass")


def hostile() -> list[tuple[str, bytes, str]]:
    base = json.dumps(GOOD, ensure_ascii=True)[:-1]
    tiny = [("f%d" % i, "", "x") for i in range(60_000)]
    return [
        ("lone surrogate", (base + ', "first_name": "An \\ud800"}').encode(), "application/json"),
        ("lone low surrogate", (base + ', "last_name": "\\udfff"}').encode(), "application/json"),
        ("raw surrogate bytes", (base + ', "first_name": "').encode() + b"\xed\xa0\x80\"}", "application/json"),
        ("nesting 1000", (base + ', "x": ' + "[" * 1000 + "]" * 1000 + "}").encode(), "application/json"),
        ("nesting 100000", ("[" * 100_000 + "]" * 100_000).encode(), "application/json"),
        ("charset rot13", multipart([("service_code", "Content-Type: text/plain; charset=rot13\r\n", "jngre_fhccyl"),
                                     ("description", "Content-Type: text/plain; charset=rot13\r\n", "Bat ahbp")]),
         "multipart/form-data; boundary=rtb"),
        # (application/json has no charset parameter, RFC 8259 section 11: ignoring one there is correct.)
        ("form charset rot13", b"service_code=jngre_fhccyl&description=Bat+ahbp",
         "application/x-www-form-urlencoded; charset=rot13"),
        ("form charset utf-7", b"service_code=water_supply&description=+AGE-",
         "application/x-www-form-urlencoded; charset=utf-7"),
        ("CR/LF in name", json.dumps({**GOOD, "first_name": "An\r\nBcc: victim@example.org"}).encode(),
         "application/json"),
        ("CR/LF in email", json.dumps({**GOOD, "email": "a@b.vn\r\nBcc: victim@example.org"}).encode(),
         "application/json"),
        ("LF in email form", b"service_code=water_supply&description=ong+nuoc+be&email=a%40b.vn%0ABcc%3A+v%40x.org",
         "application/x-www-form-urlencoded"),
        ("NUL in phone", json.dumps({**GOOD, "phone": "0903\u0000123456"}).encode(), "application/json"),
        ("U+2028 in name", json.dumps({**GOOD, "first_name": "An\u2028Bcc: v@x.org"}).encode(), "application/json"),
        ("tiny parts", multipart(tiny), "multipart/form-data; boundary=rtb"),
        ("not json", b"\xff\xfe{", "application/json"),
        ("json array", b"[1,2,3]", "application/json"),
        ("huge number", (base + ', "lat": 1' + "0" * 5000 + "}").encode(), "application/json"),
    ]


async def test_hostile_bodies_get_4xx_are_quarantined_and_spare_their_neighbours(app: tuple[AppContext, str]) -> None:
    ctx, base = app
    statuses: dict[str, int] = {}
    async with aiohttp.ClientSession() as s:
        async def post(name: str, body: bytes, ctype: str) -> None:
            async with s.post(base + URL, data=body, headers={"Content-Type": ctype}) as resp:
                statuses[name] = resp.status
                text = await resp.text()
                assert "Traceback" not in text, name

        async def good(i: int) -> int:
            async with s.post(base + URL, data={**GOOD, "description": f"{GOOD['description']} #{i}"}) as resp:
                return resp.status

        results = await asyncio.gather(*(post(*h) for h in hostile()), *(good(i) for i in range(8)))
    goods = results[len(hostile()):]
    assert goods == [201] * 8
    bad = {n: c for n, c in statuses.items() if not 400 <= c < 500}
    assert bad == {}, statuses
    kept = (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM quarantine"))["n"]
    assert kept >= len(hostile()) - 1, (kept, statuses)
    stored = (await ctx.store.fetchone("SELECT COUNT(*) AS n FROM reports"))["n"]
    assert stored == 8
