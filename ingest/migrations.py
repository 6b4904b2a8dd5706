"""Schema migrations, per component, applied in order at start and recorded in `schema_migrations`.

Each component (ingest, classifier, dedupe, dispatch...) owns a list of `(version, sql)`; a stage adds its
tables by passing its own list to `Store.open`, so no stage edits another's schema.
"""
from __future__ import annotations

from collections.abc import Mapping

from .dialect import POSTGRESQL, SQLITE, postgresql_ddl

# A migration's text is SQLite DDL, which PostgreSQL runs through `postgresql_ddl`; where that is not enough, a
# mapping gives each dialect its own text ({"sqlite": ..., "postgresql": ...}; a dialect left out runs nothing).
Migration = tuple[int, str | Mapping[str, str]]


def for_dialect(sql: str | Mapping[str, str], dialect: str) -> str:
    if not isinstance(sql, str):
        return sql.get(dialect, "")
    return sql if dialect == SQLITE else postgresql_ddl(sql)


INGEST: list[Migration] = [
    (
        1,
        """
        CREATE TABLE reports (
            id INTEGER PRIMARY KEY,
            channel TEXT NOT NULL,
            channel_instance TEXT NOT NULL,
            idem_key TEXT NOT NULL,
            external_id TEXT,
            received_at REAL NOT NULL,
            stored_at REAL NOT NULL,
            raw BLOB NOT NULL,
            raw_type TEXT NOT NULL,
            record TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'received',
            topic TEXT, category TEXT, agency TEXT, district TEXT,
            confidence REAL,
            classification TEXT,
            incident_id TEXT,
            updated_at REAL NOT NULL,
            batch_token TEXT
        );
        CREATE UNIQUE INDEX reports_idem ON reports(channel, idem_key);
        CREATE INDEX reports_status ON reports(status);
        CREATE INDEX reports_incident ON reports(incident_id);
        CREATE INDEX reports_external ON reports(external_id);

        CREATE TABLE jobs (
            id INTEGER PRIMARY KEY,
            stage TEXT NOT NULL,
            report_id INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'ready',
            attempts INTEGER NOT NULL DEFAULT 0,
            available_at REAL NOT NULL,
            lease_until REAL,
            last_error TEXT,
            payload TEXT NOT NULL DEFAULT '{}',
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX jobs_take ON jobs(stage, state, available_at);
        CREATE INDEX jobs_report ON jobs(report_id);

        CREATE TABLE events (
            id INTEGER PRIMARY KEY,
            report_id INTEGER,
            at REAL NOT NULL,
            kind TEXT NOT NULL,
            actor TEXT NOT NULL,
            data TEXT NOT NULL DEFAULT '{}'
        );
        CREATE INDEX events_report ON events(report_id);

        CREATE TABLE quarantine (
            id INTEGER PRIMARY KEY,
            channel_instance TEXT NOT NULL,
            received_at REAL NOT NULL,
            reason TEXT NOT NULL,
            raw BLOB NOT NULL,
            meta TEXT NOT NULL DEFAULT '{}'
        );

        CREATE TABLE cursors (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        );

        CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            content_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            created_at REAL NOT NULL
        );
        """,
    ),
]

INGEST.append((
    2,
    """
    -- One vector per report, written by the classify stage and read by the incident stage (float32, L2-normalised).
    CREATE TABLE embeddings (
        report_id INTEGER PRIMARY KEY,
        model TEXT NOT NULL,
        dim INTEGER NOT NULL,
        vector BLOB NOT NULL
    );
    """,
))

INGEST.append((
    3,
    """
    -- Quarantine keeps a bounded head of each input plus the whole input's sha256 and size; a repeat of the same
    -- input for the same reason counts on its first row instead of adding one (ingest/store.py quarantine).
    ALTER TABLE quarantine ADD COLUMN sha256 TEXT;
    ALTER TABLE quarantine ADD COLUMN size INTEGER;
    ALTER TABLE quarantine ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE quarantine ADD COLUMN last_at REAL;
    CREATE INDEX quarantine_digest ON quarantine(channel_instance, sha256);
    """,
))

INGEST.append((
    4,
    """
    -- One queue for every kind of work (ingest/queue.py): stage jobs, agency deliveries, channel outboxes. A job
    -- need not name a report (a Telegram question before anything is filed), may carry a deadline past which it
    -- stops being retried, and a subject operators filter on. (SQLite cannot drop NOT NULL: the table is rebuilt.)
    CREATE TABLE jobs_v4 (
        id INTEGER PRIMARY KEY,
        stage TEXT NOT NULL,
        report_id INTEGER,
        state TEXT NOT NULL DEFAULT 'ready',
        attempts INTEGER NOT NULL DEFAULT 0,
        available_at REAL NOT NULL,
        lease_until REAL,
        deadline_at REAL,
        subject TEXT,
        last_error TEXT,
        payload TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    INSERT INTO jobs_v4(id, stage, report_id, state, attempts, available_at, lease_until, last_error, payload,
                        created_at, updated_at)
        SELECT id, stage, report_id, state, attempts, available_at, lease_until, last_error, payload, created_at,
               updated_at FROM jobs;
    DROP TABLE jobs;
    ALTER TABLE jobs_v4 RENAME TO jobs;
    CREATE INDEX jobs_take ON jobs(stage, state, available_at);
    CREATE INDEX jobs_report ON jobs(report_id);
    CREATE INDEX jobs_leased ON jobs(state, lease_until);
    CREATE INDEX jobs_subject ON jobs(subject) WHERE subject IS NOT NULL;
    """,
))

INGEST.append((
    5,
    """
    -- The queue's fence (ingest/queue.py): a lease token that only grows. `attempts` fenced before, but a replay
    -- starts it again, so a worker stalled since an old lease could match the replayed job's new one. Waiting and
    -- leased jobs start from their attempts, so a lease taken before the upgrade keeps a token of its own. Done and
    -- dead jobs keep 0: done ones are never leased again, and a dead one's token only has to grow from the lease
    -- a replay gives it (every holder after the upgrade got its token from this column, so none holds a larger
    -- one). Done jobs are never purged: rewriting them all held the write lock for as long as the store is big.
    ALTER TABLE jobs ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET lease_token = attempts WHERE state IN ('ready', 'leased');
    """,
))

# What only PostgreSQL needs: its blobs live in the database (shared by every instance), and the queue takes work
# from a partial index of ready jobs. Its own component, so the shared INGEST list keeps one numbering.
POSTGRESQL_ONLY: list[Migration] = [
    (1, {POSTGRESQL: """
        CREATE TABLE blob_data (
            sha256 TEXT PRIMARY KEY,
            data BYTEA NOT NULL
        );
        CREATE INDEX jobs_ready ON jobs(stage, available_at, id) WHERE state = 'ready';
        """}),
]
