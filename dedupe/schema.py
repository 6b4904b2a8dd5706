"""Tables owned by the incident stage: incidents, their member reports, and operators' merge/split decisions."""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE incidents (
            id TEXT PRIMARY KEY,               -- "INC-000123"
            seq INTEGER NOT NULL UNIQUE,       -- the number inside the id
            first_report_id INTEGER NOT NULL,
            topic TEXT,
            district TEXT,
            place TEXT NOT NULL DEFAULT '{}',  -- JSON summary: street, landmark, ward, house_number
            created_at REAL NOT NULL,          -- received_at of the first report
            last_report_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'open' -- open | merged (into merged_into) | closed
                CHECK (state IN ('open', 'merged', 'closed')),
            merged_into TEXT,
            dispatch_report_id INTEGER         -- the report whose dispatch job opened the case; NULL: none yet
        );
        CREATE INDEX incidents_last ON incidents(last_report_at);

        CREATE TABLE incident_reports (
            report_id INTEGER PRIMARY KEY,     -- a report belongs to one incident at a time
            incident_id TEXT NOT NULL REFERENCES incidents(id),
            joined_at REAL NOT NULL,
            score REAL NOT NULL DEFAULT 1.0,
            matched_report INTEGER,
            how TEXT NOT NULL DEFAULT 'auto'   -- auto | merge | split
        );
        CREATE INDEX incident_reports_incident ON incident_reports(incident_id);

        CREATE TABLE incident_decisions (
            id INTEGER PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('merge', 'split')),
            actor TEXT NOT NULL,
            at REAL NOT NULL,
            source TEXT NOT NULL,              -- merge: the incident absorbed; split: the incident split
            target TEXT NOT NULL,              -- merge: the one kept; split: the new incident
            report_ids TEXT NOT NULL DEFAULT '[]'
        );
        """,
    ),
]

MIGRATIONS.append((
    2,
    """
    -- An incident closes with its case (resolved, false report, refused); a report of the same place and problem
    -- after that opens a new incident that names the closed one (a recurrence), so people see the history.
    ALTER TABLE incidents ADD COLUMN closed_at REAL;
    ALTER TABLE incidents ADD COLUMN closed_as TEXT;
    ALTER TABLE incidents ADD COLUMN recurrence_of TEXT;
    CREATE INDEX incidents_recurrence ON incidents(recurrence_of);
    """,
))

MIGRATIONS.append((
    3,
    """
    -- Instances sharing a PostgreSQL store read what the others decided since they last looked (dedupe/blocks.py).
    CREATE INDEX incident_reports_joined ON incident_reports(joined_at);
    """,
))

MIGRATIONS.append((
    4,
    """
    -- The version of the last closing or reopening of its case the incident applied (the dedupe job's `version`):
    -- an older one arriving later is stale and changes nothing. 0: none since the upgrade (older jobs carry none).
    ALTER TABLE incidents ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0;
    """,
))
