"""The dispatch stage's tables: cases, the delivery outbox, agency answers, deadlines, notifications, ratings.

A case is written in the same transaction as its outbox rows and deadlines, so a crash never leaves a case that
nobody will deliver, nor a delivery for a case that does not exist.
"""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        -- One case per incident; `agency` is the unit holding it now, `tried` every agency it went to (JSON list).
        CREATE TABLE cases (
            id TEXT PRIMARY KEY,
            incident_id TEXT NOT NULL UNIQUE,
            report_id INTEGER NOT NULL,
            token TEXT NOT NULL UNIQUE,
            topic TEXT NOT NULL,
            category TEXT NOT NULL,
            agency TEXT NOT NULL,
            district TEXT,
            language TEXT NOT NULL DEFAULT 'vi',
            state TEXT NOT NULL,
            complex INTEGER NOT NULL DEFAULT 0,
            coordination INTEGER NOT NULL DEFAULT 0,
            tried TEXT NOT NULL DEFAULT '[]',
            expected_completion REAL,
            result TEXT,
            received_at REAL NOT NULL,
            forwarded_at REAL NOT NULL,
            closed_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX cases_agency_state ON cases(agency, state);

        -- The outbox: one row per (case event, agency target). `msg_id` is the webhook-id / Message-ID,
        -- fixed at insert so every retry carries the same id.
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            msg_id TEXT NOT NULL UNIQUE,
            case_id TEXT NOT NULL REFERENCES cases(id),
            agency TEXT NOT NULL,
            target TEXT NOT NULL,
            kind TEXT NOT NULL,
            event TEXT NOT NULL,
            payload TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL,
            lease_until REAL,
            deadline_at REAL NOT NULL,
            last_status INTEGER,
            last_error TEXT,
            delivered_at REAL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        );
        CREATE INDEX deliveries_due ON deliveries(state, next_at);
        CREATE INDEX deliveries_case ON deliveries(case_id);

        -- Endpoints switched off by a 410 Gone (until an administrator re-enables them).
        CREATE TABLE endpoint_state (
            agency TEXT NOT NULL,
            target TEXT NOT NULL,
            disabled_at REAL NOT NULL,
            reason TEXT NOT NULL,
            PRIMARY KEY(agency, target)
        );

        CREATE TABLE answers (
            id INTEGER PRIMARY KEY,
            case_id TEXT NOT NULL REFERENCES cases(id),
            agency TEXT NOT NULL,
            kind TEXT NOT NULL,
            source TEXT NOT NULL,
            idem_key TEXT UNIQUE,
            note TEXT,
            data TEXT NOT NULL DEFAULT '{}',
            at REAL NOT NULL
        );
        CREATE INDEX answers_case ON answers(case_id);

        -- state: open -> met | missed(open past due, escalated) | cancelled; missed rows become met_late.
        CREATE TABLE deadlines (
            id INTEGER PRIMARY KEY,
            case_id TEXT NOT NULL REFERENCES cases(id),
            agency TEXT NOT NULL,
            kind TEXT NOT NULL,
            started_at REAL NOT NULL,
            due_at REAL NOT NULL,
            warn_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'open',
            warned_at REAL,
            escalated_at REAL,
            closed_at REAL
        );
        CREATE INDEX deadlines_open ON deadlines(state, due_at);
        CREATE INDEX deadlines_case ON deadlines(case_id);

        -- One row per message to a reporter; the unique key makes a retried notify job send nothing twice.
        CREATE TABLE notifications (
            id INTEGER PRIMARY KEY,
            report_id INTEGER NOT NULL,
            case_id TEXT,
            template TEXT NOT NULL,
            dedupe_key TEXT NOT NULL UNIQUE,
            channel TEXT NOT NULL,
            state TEXT NOT NULL,
            error TEXT,
            at REAL NOT NULL
        );
        CREATE INDEX notifications_report ON notifications(report_id);

        CREATE TABLE ratings (
            id INTEGER PRIMARY KEY,
            case_id TEXT NOT NULL REFERENCES cases(id),
            score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
            comment TEXT,
            at REAL NOT NULL
        );
        CREATE INDEX ratings_case ON ratings(case_id);
        """,
    ),
]

MIGRATIONS.append((
    2,
    """
    -- Clocks of a report before (or beside) its case: the operator unit's hour for a report held for review
    -- (Art. 6.3), the reporter's 5-minute acknowledgement and duplicate notice (6.2, 6.4). So `case_id` may be
    -- empty and `report_id` names the report. (SQLite cannot drop NOT NULL: the table is rebuilt.)
    CREATE TABLE deadlines_v2 (
        id INTEGER PRIMARY KEY,
        case_id TEXT REFERENCES cases(id),
        report_id INTEGER,
        agency TEXT NOT NULL,
        kind TEXT NOT NULL,
        started_at REAL NOT NULL,
        due_at REAL NOT NULL,
        warn_at REAL NOT NULL,
        state TEXT NOT NULL DEFAULT 'open',
        warned_at REAL,
        escalated_at REAL,
        closed_at REAL
    );
    INSERT INTO deadlines_v2(id, case_id, agency, kind, started_at, due_at, warn_at, state, warned_at, escalated_at,
                             closed_at)
        SELECT id, case_id, agency, kind, started_at, due_at, warn_at, state, warned_at, escalated_at, closed_at
        FROM deadlines;
    DROP TABLE deadlines;
    ALTER TABLE deadlines_v2 RENAME TO deadlines;
    CREATE INDEX deadlines_open ON deadlines(state, due_at);
    CREATE INDEX deadlines_case ON deadlines(case_id);
    CREATE INDEX deadlines_report ON deadlines(report_id);

    -- Escalation digests: one message per agency, level and recipient, written in the same transaction as the
    -- clocks that raised them (so each clock warns and escalates once), sent by the escalation sender.
    CREATE TABLE escalations (
        id INTEGER PRIMARY KEY,
        agency TEXT NOT NULL,
        level TEXT NOT NULL,              -- warning | breach
        channel TEXT NOT NULL,            -- email | sms
        recipient TEXT NOT NULL,
        items TEXT NOT NULL,              -- JSON list of the clocks in the digest
        state TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL,
        sent_at REAL
    );
    CREATE INDEX escalations_due ON escalations(state, next_at);

    -- Each reporter of an incident has their own lookup token (rating, dispute), not the case's shared one.
    CREATE TABLE reporter_links (
        report_id INTEGER PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases(id),
        token TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL
    );
    CREATE INDEX reporter_links_case ON reporter_links(case_id);
    ALTER TABLE ratings ADD COLUMN report_id INTEGER;
    CREATE UNIQUE INDEX ratings_report ON ratings(report_id);

    -- A reporter's dispute of a result: the case reopens at the same agency with it attached.
    CREATE TABLE disputes (
        id INTEGER PRIMARY KEY,
        case_id TEXT NOT NULL REFERENCES cases(id),
        report_id INTEGER NOT NULL,
        text TEXT NOT NULL,
        source TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX disputes_case ON disputes(case_id);
    """,
))

MIGRATIONS.append((
    3,
    """
    -- Coordinated cases (Art. 7.1 dangerous or multi-agency, 7.3 several agencies): besides the lead agency that
    -- holds the case (cases.agency) and whose answer resolves it, supporting agencies, each with its own delivery,
    -- answers and clocks (deadlines rows with agency = the supporter).
    CREATE TABLE case_supporters (
        case_id TEXT NOT NULL REFERENCES cases(id),
        agency TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'forwarded',   -- forwarded | acknowledged | in_progress | done | withdrawn
        forwarded_at REAL NOT NULL,
        answered_at REAL,
        PRIMARY KEY (case_id, agency)
    );
    CREATE INDEX case_supporters_agency ON case_supporters(agency, state);
    """,
))

MIGRATIONS.append((
    4,
    """
    -- Deliveries are driven by the one queue (ingest/queue.py): every row not yet delivered gets its `deliver` job,
    -- which carries its attempts, next attempt, lease, deadline and dead letter from now on (subject
    -- "agency/target", what operators replay by). `deliveries.state` keeps the outcome operators see: pending,
    -- retry, delivered, dead; a row being sent when the old daemon stopped is pending again, its job leased until
    -- the reclaimer gives it back.
    INSERT INTO jobs(stage, report_id, state, attempts, available_at, lease_until, deadline_at, subject, last_error,
                     payload, created_at, updated_at)
        SELECT 'deliver', NULL,
               CASE state WHEN 'dead' THEN 'dead' WHEN 'sending' THEN 'leased' ELSE 'ready' END,
               attempts, next_at, lease_until, deadline_at, agency || '/' || target, last_error,
               '{"type":"DeliverJob","schema_version":1,"delivery_id":' || id || '}', created_at, updated_at
        FROM deliveries WHERE state != 'delivered' ORDER BY id;
    UPDATE deliveries SET state='pending' WHERE state='sending';
    DROP INDEX IF EXISTS deliveries_due;
    """,
))

MIGRATIONS.append((
    5,
    """
    -- Escalation digests are `escalate` jobs of the one queue too: a digest still to send gets its job (attempts and
    -- next attempt kept), one given up becomes a dead letter (replayable); `escalations.state` keeps the outcome.
    INSERT INTO jobs(stage, report_id, state, attempts, available_at, subject, last_error, payload, created_at,
                     updated_at)
        SELECT 'escalate', NULL, CASE state WHEN 'failed' THEN 'dead' ELSE 'ready' END, attempts, next_at,
               agency || '/' || channel, last_error,
               '{"type":"EscalateJob","schema_version":1,"escalation_id":' || id || '}', created_at, created_at
        FROM escalations WHERE state IN ('pending', 'failed') ORDER BY id;
    DROP INDEX IF EXISTS escalations_due;
    """,
))

MIGRATIONS.append((
    6,
    """
    -- The closed incident a case's incident repeats, from the dispatch job dedupe queues (its recurrence link):
    -- dispatch reads the previous case through it and never names dedupe's tables.
    ALTER TABLE cases ADD COLUMN recurrence_of TEXT;
    """,
))

MIGRATIONS.append((
    7,
    """
    -- Each closing and reopening of a case adds one, in its transaction, and travels in the dedupe job that makes the
    -- incident follow: dedupe applies only a change newer than the last it applied (any order, any instance).
    ALTER TABLE cases ADD COLUMN state_version INTEGER NOT NULL DEFAULT 0;
    """,
))
