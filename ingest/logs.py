"""Log output: plain text or JSON lines, with journald priorities under systemd, and per-job context fields.

- `log_context(report_id=..., job=..., stage=..., channel=...)` sets fields for every record logged inside it
  (the stage worker wraps each job in one); `extra={"report_id": ...}` on a call sets them for one record.
- Text: `TIME LEVEL logger: message [report_id=… job=…]`; JSON: one object per line with `time`, `level`,
  `logger`, `message`, the context fields and `exception` (a traceback stays inside its one line).
- Under journald (systemd's `JOURNAL_STREAM` names our stderr) every line starts with its syslog priority
  (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), so `journalctl -p err` finds errors, and the time is
  left out: the journal stamps each entry itself, and a time written twice is noise.
- Warnings, errors and every traceback are redacted (ingest.pii.redact) as they are written: they quote what came
  from outside (a peer's refusal, an exception holding a rejected field, a parser's excerpt), and personal data
  never reaches a log. `redact`, not `redact_ids`: the daemon's own job, delivery and report ids (below 9 digits)
  must stay in the line that names them; phones, e-mails, ID numbers and any run of 9 digits or more go. The
  daemon's own info lines say ids and states, and stay as written (they are most lines; redaction has a price).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from .pii import redact

# The fields a record may carry, in output order.
CONTEXT_FIELDS = ("report_id", "job", "stage", "channel")
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar("log_context", default={})
# syslog priorities (RFC 5424) by logging level, as journald reads them from a `<N>` line prefix.
PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = dict(_context.get())
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            fields[name] = value
    return {name: fields[name] for name in CONTEXT_FIELDS if name in fields}


def _message(record: logging.LogRecord) -> str:
    message = record.getMessage()
    return redact(message) if record.levelno >= logging.WARNING else message


def _priority(record: logging.LogRecord) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if record.levelno >= level:
            return PRIORITY[level]
    return PRIORITY[logging.DEBUG]


# Every character that ends a line for some reader (str.splitlines, a terminal, journald) or drives a terminal: C0
# controls but tab, DEL, C1, the Unicode line and paragraph separators. A message quotes what clients send (the access
# log's path is decoded: "/public%0d%0a…"), which must not start a line of its own that reads like ours.
_LINE_FORGING = {c: chr(c).encode("unicode_escape").decode("ascii")
                 for c in [*range(0x00, 0x09), *range(0x0a, 0x20), *range(0x7f, 0xa0), 0x2028, 0x2029]}


# Inside JSON strings, as \uXXXX escapes a JSON reader turns back into the same text.
_JSON_LINE_BREAKS = {c: f"\\u{c:04x}" for c in [*range(0x7f, 0xa0), 0x2028, 0x2029]}


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = f"{record.levelname} {record.name}: {_message(record)}"
        fields = _fields(record)
        if fields:
            line += " [" + " ".join(f"{k}={v}" for k, v in fields.items()) + "]"
        line = line.translate(_LINE_FORGING)  # the traceback below is ours, one line per frame
        if record.exc_info:
            line += "\n" + redact(self.formatException(record.exc_info))
        if not self.journald:
            return f"{self.formatTime(record)} {line}"
        # journald makes one entry of each line: each carries the priority.
        prefix = f"<{_priority(record)}>"
        return "\n".join(prefix + part for part in line.split("\n"))


class JsonFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {}
        if not self.journald:
            entry["time"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + \
                f".{int(record.msecs):03d}Z"
        entry.update(level=record.levelname, logger=record.name, message=_message(record), **_fields(record))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        # json.dumps escapes C0 controls only: DEL, C1 (NEL 0x85) and U+2028/2029 break lines for the readers
        # that split on them (str.splitlines, some log shippers), so a client could still forge a line.
        line = json.dumps(entry, ensure_ascii=False, default=str).translate(_JSON_LINE_BREAKS)
        return f"<{_priority(record)}>{line}" if self.journald else line


def under_journald(stream: TextIO | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` (stderr) is the journal stream systemd handed us (JOURNAL_STREAM="DEV:INODE")."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    dev, _, ino = value.partition(":")
    if not (dev.isdigit() and ino.isdigit()):
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def make_handler(fmt: str = "text", journald: bool | None = None, stream: TextIO | None = None) -> logging.Handler:
    stream = stream or sys.stderr
    journald = under_journald(stream) if journald is None else journald
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter(journald) if fmt == "json" else TextFormatter(journald))
    return handler
