"""/openapi.json describes the agency API and the webhooks as they are: schemathesis sends generated requests to
the running server (a real aiohttp site on loopback with the dispatch routes and a real store holding a case)
and checks every answer against the document: no 5xx, only documented statuses, content types and bodies.
Few examples per operation (make test stays fast); more belong in a bench run."""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from config.directory import load_directory
from config.loader import validate

TOKEN = "sawaco-answer-token-0123456789"


@dataclass
class ApiServer:
    url: str
    case_id: str


def _serve(tmp: Path, ready: threading.Event, box: dict[str, Any]) -> None:
    """The server's own event loop, in a thread: schemathesis calls it with blocking requests."""
    from aiohttp import web

    import run_daemon
    from dispatch import service as dispatch_service

    from .conftest import run_dispatch, seed_report

    async def main() -> None:
        settings_ = validate({"http": {"public_base_url": "https://1022.example.vn"},
                              "secrets": {"agency.sawaco": TOKEN},
                              "dispatch": {"agencies": {"sawaco": {"targets": [
                                  {"kind": "email", "to": ["x@sawaco.example.vn"]}]}}}}, {})
        store = await run_daemon.open_store(settings_, path=tmp / "store.sqlite3")
        ctx = run_daemon.make_context(settings_, load_directory(), store)
        dispatch_service.build(ctx)  # routes only: no sender or ticker runs
        rid = await seed_report(store)
        await run_dispatch(store, dispatch_service.make_book(ctx), rid, "INC-000001")
        case = await store.fetchone("SELECT id FROM cases")
        runner = web.AppRunner(ctx.http)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        box["server"] = ApiServer(f"http://127.0.0.1:{runner.addresses[0][1]}", case["id"])
        box["stop"] = stop = asyncio.Event()
        box["loop"] = asyncio.get_running_loop()
        ready.set()
        await stop.wait()
        await runner.cleanup()
        await store.close()

    asyncio.run(main())


@pytest.fixture(scope="module")
def api_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    ready, box = threading.Event(), {}
    thread = threading.Thread(target=_serve, args=(tmp_path_factory.mktemp("openapi"), ready, box), daemon=True)
    thread.start()
    assert ready.wait(60), "the API server did not start"
    yield box["server"]
    box["loop"].call_soon_threadsafe(box["stop"].set)
    thread.join(30)


def test_the_running_api_conforms_to_its_openapi_document(api_server: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(api_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 6
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=8, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"})

        conforms()


def test_the_document_covers_the_api_and_every_webhook(api_server: ApiServer) -> None:
    doc = requests.get(api_server.url + "/openapi.json", timeout=10).json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) >= {"/api/v1/agency/cases", "/api/v1/agency/cases/{case_id}",
                                 "/api/v1/agency/cases/{case_id}/answers"}
    assert set(doc["webhooks"]) == {"case.created", "case.rerouted", "case.disputed", "case.merged",
                                    "case.support"}
    # The case the agency holds, read with its token, has the documented shape (checked by schemathesis above
    # on generated ids; here on the real one).
    got = requests.get(f"{api_server.url}/api/v1/agency/cases/{api_server.case_id}",
                       headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert got.status_code == 200 and got.json()["detail"]["answer_url"].endswith("/answers")
    listed = requests.get(f"{api_server.url}/api/v1/agency/cases", headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=10).json()
    assert [c["case_id"] for c in listed["cases"]] == [api_server.case_id]
