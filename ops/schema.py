"""The ops tables: one row per periodic report sent (or being retried) to an agency's leadership.

The unique key makes the weekly sender idempotent across restarts: a week already sent is never sent again,
and a send that failed is retried from its row.
"""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        -- kind: weekly | quarterly; period: the period's first day (ISO date, Vietnam time); channel: email | sms.
        -- state: pending (being tried) | sent | failed (gave up after max attempts; an operator may reset it).
        CREATE TABLE ops_report_sends (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL,
            agency TEXT NOT NULL,
            period TEXT NOT NULL,
            channel TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            message_id TEXT,
            sent_at REAL,
            updated_at REAL NOT NULL,
            UNIQUE(kind, agency, period, channel)
        );
        """,
    ),
]
