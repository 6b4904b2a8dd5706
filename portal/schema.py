"""The portal's tables: private lookup tokens of reports filed on the web, its server key, stripped photos."""
from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        -- The receipt's private link: an unguessable token per report filed through the portal. Written right after
        -- the report's commit (INSERT OR IGNORE): a retried form with the same key finds the same report and token.
        CREATE TABLE portal_receipts (
            report_id INTEGER PRIMARY KEY,
            token TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            rated_score INTEGER,
            rated_at REAL
        );
        -- Server keys (the CSRF signing key), generated once, shared by every process on this store.
        CREATE TABLE portal_keys (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL
        );
        -- Photo blob -> its copy without metadata (portal/photos.py), made once on first display.
        CREATE TABLE portal_photos (
            original TEXT PRIMARY KEY,
            stripped TEXT NOT NULL
        );
        """,
    ),
]
