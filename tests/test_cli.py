"""The operator CLI as an administrator runs it: `route` (stable batch format) and `replay` (dead letters back)."""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.records import InboundMessage, Reporter
from ingest.store import Store

REPO = Path(__file__).resolve().parent.parent
# The project's own copy of the 700 labelled dev reports (contacts stripped): no test reads outside the repository.
DEV = REPO / "classifier" / "data" / "reports-seed.jsonl"
# `ward` (the 2025 unit's slug) is null on the 2023 map: the key set is the same under both structures.
ROUTE_KEYS = {"id", "status", "topic", "category", "agency", "district", "confidence", "incident", "ward"}
STATUSES = {"dispatched", "duplicate", "review", "rejected", "out_of_scope"}
CLASSIFIER_PRESENT = importlib.util.find_spec("classifier.service") is not None


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(REPO / "run_daemon.py"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[store]\npath = "{tmp_path / "store.sqlite3"}"\nblob_dir = "{tmp_path / "blobs"}"\n'
                    f'[classifier]\ncache_dir = "{REPO / "var" / "models"}"\n[logging]\nlevel = "WARNING"\n{extra}',
                    encoding="utf-8")
    return path


@pytest.mark.timeout(300)
def test_route_writes_one_line_per_report_with_the_stable_keys(tmp_path: Path) -> None:
    lines = DEV.read_text(encoding="utf-8").splitlines()[:40]
    # Shuffled out of time order: the output follows the input order, routing follows received_at.
    lines = lines[20:] + lines[:20]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _run("route", "--input", str(source), "--output", str(out), "--config", str(_config(tmp_path)),
                  "--store", str(tmp_path / "route.sqlite3"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    inputs = [json.loads(line) for line in lines]
    assert [r["id"] for r in rows] == [i["id"] for i in inputs]
    for row in rows:
        assert set(row) == ROUTE_KEYS
        assert row["ward"] is None  # the default map is 2023's
        assert row["status"] in STATUSES
        assert row["confidence"] is None or 0.0 <= row["confidence"] <= 1.0
        if row["status"] in ("dispatched", "duplicate", "review"):
            assert row["agency"] and row["incident"]
    # Reports judged one incident share an id; a duplicate always points at an incident that was dispatched
    # or is in review.
    by_incident: dict[str, list[str]] = {}
    for row in rows:
        if row["incident"]:
            by_incident.setdefault(row["incident"], []).append(row["status"])
    for statuses in by_incident.values():
        if "duplicate" in statuses:
            assert {"dispatched", "review"} & set(statuses), statuses
    # --store keeps the routed store for inspection, with nothing sent.
    assert (tmp_path / "route.sqlite3").exists()
    if CLASSIFIER_PRESENT:
        right = sum(r["topic"] == i["expected"]["topic"] for r, i in zip(rows, inputs))
        assert right >= len(rows) // 2, f"only {right}/{len(rows)} topics right"


@pytest.mark.timeout(300)
@pytest.mark.skipif(not CLASSIFIER_PRESENT, reason="needs the classifier")
def test_route_on_the_2025_map_names_the_unit_and_its_committee(tmp_path: Path) -> None:
    reports = [
        ("r1", "Rác chất đống bốc mùi ở hẻm 12 Hậu Giang P.7 Q.6 cả tuần không ai gom", "binh-tien"),
        ("r2", "rac chat dong boc mui o phuong tam thang vung tau ca tuan khong ai gom", "tam-thang"),
        ("r3", "Quán nhậu hát karaoke ồn tới 1 giờ sáng ở phường Phú Cường, TP Thủ Dầu Một", "thu-dau-mot"),
        ("r4", "Quận 6 có người xây nhà không phép lấn ra hẻm", None),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "channel": "app", "received_at": f"2026-09-0{n + 1}T08:00:00+07:00",
                                          "text": t}, ensure_ascii=False) + "\n"
                              for n, (i, t, _) in enumerate(reports)), encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _run("route", "--input", str(source), "--output", str(out),
                  "--config", str(_config(tmp_path, '[data]\nstructure = "2025"\n')))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {r["id"]: r for r in map(json.loads, out.read_text(encoding="utf-8").splitlines())}
    for report_id, _, ward in reports:
        row = rows[report_id]
        assert set(row) == ROUTE_KEYS and row["ward"] == ward, row
        if ward is not None and row["status"] == "dispatched":
            assert row["agency"] == f"ubnd-{ward}", row
    # An old district alone names four candidate units: a person picks one, nothing is dispatched to a guess.
    assert rows["r4"]["status"] == "review" and rows["r4"]["agency"] == "van-hanh-1022"
    assert sum(rows[i]["agency"] == f"ubnd-{w}" for i, _, w in reports if w) >= 2


def test_route_on_an_empty_input(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    result = _run("route", "--input", str(source), "--output", str(out), "--config", str(_config(tmp_path)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text(encoding="utf-8") == ""


async def _dead_letter(db: Path, blobs: Path) -> int:
    store = await Store.open(db, blobs)
    try:
        msg = InboundMessage(channel="app", channel_instance="app", idempotency_key="replay-me",
                             received_at="2026-09-01T08:00:00+07:00", text="Cây ngã", reporter=Reporter())
        await store.submit(msg, b"raw", "text/plain")
        (job,) = await store.lease("classify", 1, 60)
        await store.fail(job, "PermanentError: model file missing", retry_in=0, dead=True)
        return job.id
    finally:
        await store.close()


def test_replay_puts_dead_letters_back(tmp_path: Path) -> None:
    config = _config(tmp_path)
    job_id = asyncio.run(_dead_letter(tmp_path / "store.sqlite3", tmp_path / "blobs"))
    listed = _run("replay", "--list", "--config", str(config), timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert f"{job_id}\tclassify\treport 1\tattempts=1\tPermanentError: model file missing" in listed.stdout
    assert "1 dead-lettered job(s)" in listed.stdout
    other_stage = _run("replay", "--kind", "deliver", "--config", str(config), timeout=60)
    assert other_stage.returncode == 0 and "replayed 0" in other_stage.stdout
    other_stage = _run("replay", "--stage", "dedupe", "--config", str(config), timeout=60)
    assert other_stage.returncode == 0 and "replayed 0" in other_stage.stdout
    result = _run("replay", "--config", str(config), timeout=60)
    assert result.returncode == 0, result.stderr
    assert "replayed 1 dead-lettered job(s)" in result.stdout

    import sqlite3
    conn = sqlite3.connect(tmp_path / "store.sqlite3")
    try:
        assert conn.execute("SELECT state, attempts FROM jobs WHERE id=?", (job_id,)).fetchone() == ("ready", 0)
        assert conn.execute("SELECT status FROM reports").fetchone() == ("received",)
        assert conn.execute("SELECT kind, actor FROM events ORDER BY id").fetchall() == \
            [("dead_letter", "system"), ("replayed", "operator")]
    finally:
        conn.close()
    assert "replayed 0" in _run("replay", "--config", str(config), timeout=60).stdout


def test_replay_knows_what_every_kind_s_replay_means() -> None:
    """The generic replay runs each kind's own hook: a replayed delivery re-enables its endpoint and gets a fresh
    deadline (dispatch/delivery.py), which only works once the owning module declared it."""
    from ingest.queue import kind_spec
    from run_daemon import collect_job_kinds

    collect_job_kinds()
    spec = kind_spec("deliver")
    assert spec is not None and spec.on_replay is not None and spec.on_dead is not None
    assert spec.payload is not None and spec.payload.__name__ == "DeliverJob"


def test_unknown_command_and_bad_config_exit_nonzero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[http]\nport = 'x'\n", encoding="utf-8")
    result = _run("replay", "--config", str(bad), timeout=60)
    assert result.returncode == 2 and "http.port" in result.stderr and "Traceback" not in result.stderr


# -- one parser: --config anywhere, --help without the store, --version ----------------------------------------
def test_config_before_or_after_the_command_and_user_add(tmp_path: Path) -> None:
    config = str(_config(tmp_path))
    env_password = {"FIRST_ADMIN_PW": "mat-khau-dai-du-16"}
    os.environ.update(env_password)
    try:
        added = _run("user", "add", "quan-tri", "--role", "admin", "--password-env", "FIRST_ADMIN_PW",
                     "--config", config, timeout=60)
    finally:
        os.environ.pop("FIRST_ADMIN_PW")
    assert added.returncode == 0, added.stderr
    listed = _run("--config", config, "user", "list", timeout=60)
    assert listed.returncode == 0 and "quan-tri\tadmin" in listed.stdout
    # Without a password source and without a terminal, `user add` says what to give (exit 2, usage).
    missing = _run("user", "add", "x", "--role", "operator", "--config", config, timeout=60)
    assert missing.returncode == 2 and "--password-env" in missing.stdout
    assert _run("user", "disable", "nobody", "--config", config, timeout=60).returncode == 1


@pytest.mark.parametrize("command", [["serve"], ["review", "decide"], ["incident"], ["dispatch", "overdue"],
                                     ["user", "add"], ["report"], ["route"], ["check-config"]])
def test_help_on_every_command_never_opens_the_store(tmp_path: Path, command: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import run_daemon

    config = str(_config(tmp_path))
    with pytest.raises(SystemExit) as exited:
        run_daemon.main([*command, "--help", "--config", config])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--config FILE" in out and "exit codes:" in out
    assert not (tmp_path / "store.sqlite3").exists()


def test_version_and_unknown_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    import run_daemon

    expected = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    with pytest.raises(SystemExit) as exited:
        run_daemon.main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip().endswith(expected)
    with pytest.raises(SystemExit) as exited:
        run_daemon.main(["review", "frobnicate"])
    assert exited.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_a_store_that_cannot_be_opened_exits_3_without_a_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")  # a file where the store's directory should be
    config = tmp_path / "c.toml"
    config.write_text(f'[store]\npath = "{blocker / "x.sqlite3"}"\nblob_dir = "{blocker / "blobs"}"\n', encoding="utf-8")
    result = _run("replay", "--config", str(config), timeout=60)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.stderr


async def test_first_run_says_how_to_create_the_first_admin(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    import run_daemon
    from console.auth import create_user

    config = _config(tmp_path)
    settings = run_daemon.load_settings(str(config))
    assert "/console" in run_daemon.welcome(settings) and "/metrics" in run_daemon.welcome(settings)
    await run_daemon.ensure_first_admin(settings, str(config))  # stdin is no terminal under pytest: no question
    told = capsys.readouterr().err
    assert f"run_daemon.py user add admin --role admin --config {config}" in told
    store = await run_daemon.open_store(settings)
    try:
        await create_user(store, "admin", "admin", "mat-khau-dai-du-16")
    finally:
        await store.close()
    await run_daemon.ensure_first_admin(settings, str(config))
    assert capsys.readouterr().err == ""  # a login exists: nothing to say


def test_the_component_registry_names_every_package_that_owns_tables_or_services() -> None:
    """One registry: a package with a schema, a service builder or operator commands is found there, and everything
    the registry names exists, so the CLI, the migrations and the service start cannot drift apart."""
    import run_daemon

    registered = {component.migrations for component in run_daemon.COMPONENTS if component.migrations}
    schemas = {f"{path.parent.name}.schema" for path in REPO.glob("*/schema.py")} - {"config.schema"}
    assert schemas <= registered
    for component in run_daemon.COMPONENTS:
        for module in filter(None, (component.migrations, (component.builder or "").partition(":")[0],
                                    *(command.module for command in component.commands))):
            assert importlib.util.find_spec(module) is not None, (component.name, module)
        if component.builder:
            module, _, function = component.builder.partition(":")
            assert callable(getattr(importlib.import_module(module), function)), component.builder
    # Every operator command of a component is on the CLI, each once.
    commands = [command.name for component in run_daemon.COMPONENTS for command in component.commands]
    assert len(commands) == len(set(commands)) and set(commands) <= set(run_daemon.build_parser()._subparsers
                                                                       ._group_actions[0].choices)
