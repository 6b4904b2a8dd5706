"""The call-centre channel: transcripts dropped into a maildir-style folder (writer: tmp/ then rename to new/).

A file moves to done/ only after its report is committed, so a crash in between re-reads it on restart and
the sha256 idempotency key makes the second read a no-op.
"""
from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from config.channels import ChannelEntry, TranscriptOptions
from ingest.app import AppContext, Service
from ingest.blobs import fsync_dir
from ingest.clock import iso
from ingest.errors import TransientError
from ingest.pii import redact_ids

from .transcripts_parse import TranscriptError, parse_transcript

log = logging.getLogger(__name__)


class TranscriptFolder:
    def __init__(self, ctx: AppContext, entry: ChannelEntry, options: TranscriptOptions) -> None:
        self.ctx = ctx
        self.name = entry.name
        self.options = options
        self.root = Path(options.folder)
        for sub in ("tmp", "new", "done", "rejected"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await self.scan_once()
            except (TransientError, OSError) as exc:
                # Store or disk trouble: the file stays in new/ and is taken again at the next scan.
                if not failing:
                    log.error("transcripts %s: scan failed, will retry: %s", self.name, type(exc).__name__)
                failing = True
            else:
                if failing:
                    log.info("transcripts %s: scanning again", self.name)
                failing = False
            await asyncio.sleep(self.options.poll_seconds)

    async def scan_once(self) -> int:
        """Take every file in new/, oldest first; returns how many were handled."""
        new = self.root / "new"
        entries = sorted((p for p in new.iterdir() if p.is_file() and not p.name.startswith(".")),
                         key=lambda p: (p.stat().st_mtime, p.name))
        for path in entries:
            await self._take(path)
        return len(entries)

    async def _take(self, path: Path) -> None:
        raw = await asyncio.to_thread(path.read_bytes)
        if len(raw) > self.options.max_bytes:
            await self._reject(path, raw, f"file is {len(raw)} bytes, over the limit of {self.options.max_bytes}")
            return
        try:
            message = parse_transcript(raw, filename=path.name, channel_instance=self.name,
                                       default_received_at=iso(self.ctx.clock.now()))
        except TranscriptError as exc:
            await self._reject(path, raw, str(exc))
            return
        await self.ctx.store.submit(message, raw, "application/json" if raw.lstrip().startswith(b"{") else "text/plain")
        _move(path, self.root / "done" / path.name)

    async def _reject(self, path: Path, raw: bytes, reason: str) -> None:
        # The reason can quote the file (a Received-At holding the caller's number): logs hold no personal data.
        # The quarantine row and rejected/NAME.error keep it whole for the operators who mend the file.
        log.warning("transcript %s rejected: %s", path.name, redact_ids(reason))
        await self.ctx.store.quarantine(self.name, raw, reason, {"file": path.name})
        target = self.root / "rejected" / path.name
        error = target.with_name(target.name + ".error")
        error.write_text(reason + "\n", encoding="utf-8")
        _move(path, target)


def _move(src: Path, dst: Path) -> None:
    if dst.exists():  # a second file of the same name: keep both
        dst = dst.with_name(f"{dst.stem}.{os.getpid()}.{int(src.stat().st_mtime_ns)}{dst.suffix}")
    os.replace(src, dst)
    fsync_dir(dst.parent)


def build(ctx: AppContext, entry: ChannelEntry, options: TranscriptOptions) -> list[Service]:
    return [TranscriptFolder(ctx, entry, options)]
