"""Tables of the console: users and their roles, login sessions, and the log of personal-data views."""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE users (
            id INTEGER PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            role TEXT NOT NULL CHECK (role IN ('operator', 'agency', 'admin')),
            agency TEXT,
            password_hash TEXT,
            disabled INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        -- Session and API tokens are stored hashed: a copy of the database does not let anyone log in.
        CREATE TABLE sessions (
            token_hash TEXT PRIMARY KEY,
            user_id INTEGER NOT NULL REFERENCES users(id),
            csrf TEXT NOT NULL,
            kind TEXT NOT NULL DEFAULT 'session',
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        );
        -- Art. 9: every view of a confidential reporter's personal data, by whom and when.
        CREATE TABLE pii_access_log (
            id INTEGER PRIMARY KEY,
            user_id INTEGER NOT NULL,
            username TEXT NOT NULL,
            report_id INTEGER NOT NULL,
            at REAL NOT NULL,
            what TEXT NOT NULL
        );
        """,
    ),
    (
        2,
        """
        -- The public list and the Open311 date window filter on arrival time; the console searches by it too.
        CREATE INDEX IF NOT EXISTS reports_received ON reports(received_at);
        CREATE INDEX pii_access_log_report ON pii_access_log(report_id);
        CREATE INDEX sessions_user ON sessions(user_id);
        """,
    ),
]
