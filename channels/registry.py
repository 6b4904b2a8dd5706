"""The explicit registry `kind -> factory` of channel adapters; config models live in config/channels.py.

A factory takes (ctx, entry, validated options) and returns the services to run; it may add HTTP routes
and register a ReplySender for its channel kind.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from config.channels import CHANNEL_MODELS
from ingest.app import AppContext, Service

# kind -> module whose `build(ctx, entry, options)` creates the adapter; imported only when configured.
FACTORIES: dict[str, str] = {
    "open311": "channels.open311",
    "transcripts": "channels.transcripts",
    "smtp": "channels.smtp",
    "imap": "channels.imap",
    "messenger": "channels.messenger",
    "telegram": "channels.telegram",
}


def factory(kind: str) -> Callable[..., list[Service]]:
    module = importlib.import_module(FACTORIES[kind])
    build: Callable[..., Any] = module.build
    return build


def build_channels(ctx: AppContext) -> list[Service]:
    services: list[Service] = []
    for entry in ctx.settings.channels:
        if not entry.enabled:
            continue
        options = CHANNEL_MODELS[entry.kind].model_validate(entry.options())
        built = factory(entry.kind)(ctx, entry, options)
        services.extend(built if isinstance(built, list) else [built])
    return services
