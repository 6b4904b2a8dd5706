"""Log lines as journald and log shippers read them: JSON objects with the job's fields, `<N>` priorities under
systemd (checked against a real stderr stream named by JOURNAL_STREAM), and the time written once."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from ingest.logs import log_context, make_handler, under_journald

REPO = Path(__file__).resolve().parents[2]


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test-logs-{id(handler)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger


def test_json_lines_carry_the_job_fields_and_exceptions_stay_on_one_line() -> None:
    out = io.StringIO()
    log = _logger(make_handler("json", journald=False, stream=out))
    with log_context(report_id=42, job=7, stage="classify", channel="app"):
        log.info("classified in %d ms", 12)
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            log.exception("failed")
    log.warning("outside", extra={"channel": "mailbox"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["message"] == "classified in 12 ms" and first["level"] == "INFO"
    assert (first["report_id"], first["job"], first["stage"], first["channel"]) == (42, 7, "classify", "app")
    assert first["time"].endswith("Z")
    assert "ValueError: bad" in second["exception"] and second["level"] == "ERROR"
    assert third["channel"] == "mailbox" and "report_id" not in third


def test_journald_lines_start_with_the_priority_and_carry_no_time() -> None:
    out = io.StringIO()
    log = _logger(make_handler("text", journald=True, stream=out))
    log.error("store unavailable")
    log.info("listening")
    try:
        raise RuntimeError("x")
    except RuntimeError:
        log.warning("retrying", exc_info=True)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("<3>ERROR ") and lines[1].startswith("<6>INFO ")
    assert all(line.startswith("<4>") for line in lines[2:])  # every traceback line keeps its priority
    assert lines[1] == f"<6>INFO {log.name}: listening"  # no time of ours: the journal stamps entries
    out = io.StringIO()
    _logger(make_handler("json", journald=True, stream=out)).error("x")
    assert out.getvalue().startswith("<3>{") and "time" not in json.loads(out.getvalue()[3:])
    out = io.StringIO()
    _logger(make_handler("text", journald=False, stream=out)).info("once")
    assert out.getvalue().count(":") >= 2 and not out.getvalue().startswith("<")


def test_journald_is_detected_from_journal_stream_naming_stderr(tmp_path: Path) -> None:
    path = tmp_path / "stream"
    with open(path, "w") as fh:
        st = os.fstat(fh.fileno())
        assert under_journald(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        assert not under_journald(fh, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"})
        assert not under_journald(fh, {})


def test_the_daemon_logs_json_with_priorities_under_a_journal_stream(tmp_path: Path) -> None:
    """check-config of a broken file through the real entry point, with stderr a file named by JOURNAL_STREAM."""
    config = tmp_path / "c.toml"
    config.write_text('[logging]\nformat = "json"\n[store]\npath = "%s"\n' % (tmp_path / "s.sqlite3"), encoding="utf-8")
    err = tmp_path / "stderr"
    with open(err, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}", "HF_HUB_OFFLINE": "1"}
        code = ("import logging, run_daemon, sys; s = run_daemon.load_settings(sys.argv[1]);"
                "run_daemon.setup_logging(s.logging.level, s.logging.format, s.logging.journald);"
                "logging.getLogger('run_daemon').error('disk full')")
        subprocess.run([sys.executable, "-c", code, str(config)], cwd=REPO, env=env, stderr=fh, check=True, timeout=60)
    line = err.read_text(encoding="utf-8").strip()
    assert line.startswith("<3>") and json.loads(line[3:])["message"] == "disk full"


def test_warnings_errors_and_tracebacks_hold_no_personal_data_whatever_they_quote() -> None:
    """A peer's refusal or an exception may quote a reporter's phone, e-mail or ID number: warnings, errors and
    tracebacks are redacted as written, in both formats. An info line (the daemon's own ids and states) is not."""
    for fmt in ("text", "json"):
        out = io.StringIO()
        log = _logger(make_handler(fmt, journald=False, stream=out))
        log.warning("gateway refused: %s", "số 0901234567 không nhận tin, liên hệ an.nguyen@example.com")
        try:
            raise ValueError("CCCD 079203005678 không hợp lệ")
        except ValueError:
            log.exception("service failed")
        log.info("report %d classified", 123456)
        text = out.getvalue()
        for secret in ("0901234567", "an.nguyen@example.com", "079203005678"):
            assert secret not in text, (fmt, secret)
        assert "gateway refused" in text and "ValueError" in text and "report 123456 classified" in text


def test_a_warning_still_names_the_daemons_own_job_and_delivery_ids() -> None:
    out = io.StringIO()
    log = _logger(make_handler("text", journald=False, stream=out))
    log.warning("job %d (%s): its payload does not decode; delivery %d dead", 123456, "dedupe", 7654321)
    assert "job 123456 (dedupe)" in out.getvalue() and "delivery 7654321 dead" in out.getvalue(), out.getvalue()


def test_a_client_cannot_forge_a_text_log_line_through_what_a_message_quotes() -> None:
    # Red-team probe: GET /public%0d%0a<a forged line> wrote a second line to the access log, formatted like ours
    # (and a terminal escape). What a message quotes shows its control characters escaped, on the line it is on.
    forged = "/public\r\n2026-12-07 17:00:00,000 ERROR forged: admin password reset\x1b[31m\u2028\x85x"
    for journald in (False, True):
        out = io.StringIO()
        log = _logger(make_handler("text", journald=journald, stream=out))
        log.info("%s %s %s %.1fms", "GET", forged, 404, 1.0)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1, lines
        assert "\x1b" not in lines[0]
        assert "/public\\r\\n2026-12-07 17:00:00,000 ERROR forged: admin password reset\\x1b[31m" in lines[0]


def test_a_client_cannot_forge_a_json_log_line_either() -> None:
    # Review: json.dumps escapes C0 only; U+2028/2029, NEL and C1 controls passed raw and split the line for
    # readers that split on them. Escaped, the message reads back the same.
    forged = "/public\u2028{\"level\": \"ERROR\", \"message\": \"forged\"}\x85\x9b31m\x7fx"
    for journald in (False, True):
        out = io.StringIO()
        log = _logger(make_handler("json", journald=journald, stream=out))
        log.info("%s %s", "GET", forged)
        lines = out.getvalue().splitlines()
        assert len(lines) == 1, lines
        entry = json.loads(lines[0].split(">", 1)[1] if journald else lines[0])
        assert entry["message"] == f"GET {forged}"
