"""The classifier's own tables: operator review decisions (who, when, what), which are also training data."""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE review_decisions (
            id INTEGER PRIMARY KEY,
            report_id INTEGER NOT NULL,
            actor TEXT NOT NULL,
            at REAL NOT NULL,
            decision TEXT NOT NULL,          -- 'route' or 'reject'
            topic TEXT,
            agency TEXT,
            previous_topic TEXT,
            previous_agency TEXT,
            text TEXT NOT NULL               -- the text the decision labels, for retraining
        );
        CREATE INDEX review_decisions_report ON review_decisions(report_id);
        """,
    ),
]
