"""Load the TOML config, apply environment overrides and `env:NAME` secret references, validate everything.

All problems are collected and raised together as one ConfigError listing each key path, so an admin fixes
a broken file in one pass.
"""
from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ingest.errors import ConfigError

from .channels import CHANNEL_MODELS, ChannelEntry, ChannelOptions
from .schema import Settings

ENV_PREFIX = "HCMC1022__"
DEFAULT_PATH = Path(__file__).with_name("default.toml")

# Sections validated by a model owned by a later stage: name -> model class (registered at import).
EXTRA_SECTIONS: dict[str, type[BaseModel]] = {}


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    source = Path(path) if path else DEFAULT_PATH
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return validate(raw, env, str(source))


def validate(raw: dict[str, Any], env: Mapping[str, str], source: str = "<config>") -> Settings:
    errors: list[str] = []
    _apply_env_overrides(raw, env, errors)
    _resolve_env_refs(raw, env, (), errors)
    settings: Settings | None = None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        errors.extend(_format(exc, raw=raw))
    # Channels and stage-owned sections are checked even when the rest failed: every problem in one pass.
    errors.extend(_validate_channels(settings.channels if settings is not None else _raw_channels(raw), raw))
    for name, model in EXTRA_SECTIONS.items():
        section = getattr(settings, name) if settings is not None else raw.get(name, {})
        if not isinstance(section, dict):
            continue  # already reported by the Settings validation
        try:
            model.model_validate(section)
        except ValidationError as exc:
            errors.extend(_format(exc, prefix=(name,), raw=raw))
    if errors:
        raise ConfigError(f"{source}: {len(errors)} problem(s):\n" + "\n".join(f"  - {e}" for e in errors))
    assert settings is not None
    return settings


def channel_options(entry: Any) -> ChannelOptions:
    return CHANNEL_MODELS[entry.kind].model_validate(entry.options())


def _raw_channels(raw: dict[str, Any]) -> list[ChannelEntry | None]:
    """The `[[channels]]` entries that are well-formed on their own (None keeps the index of a broken one)."""
    items = raw.get("channels")
    if not isinstance(items, list):
        return []
    entries: list[ChannelEntry | None] = []
    for item in items:
        try:
            entries.append(ChannelEntry.model_validate(item))
        except ValidationError:
            entries.append(None)  # its problems are in the Settings errors already
    return entries


def _validate_channels(entries: Sequence[ChannelEntry | None], raw: Any = None) -> list[str]:
    errors = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry is None:
            continue
        where = f"channels[{i}]"
        if entry.name in seen:
            errors.append(f"{where}.name: duplicate channel name {entry.name!r}")
        seen.add(entry.name)
        model = CHANNEL_MODELS.get(entry.kind)
        if model is None:
            errors.append(f"{where}.kind: unknown channel kind {entry.kind!r} (known: {', '.join(sorted(CHANNEL_MODELS))})")
            continue
        try:
            model.model_validate(entry.options())
        except ValidationError as exc:
            errors.extend(_format(exc, prefix=("channels", i), raw=raw))
    return errors


def _unresolved(raw: Any, loc: Sequence[Any]) -> bool:
    """True when `loc` reaches an "env:NAME" still in place: its variable is unset, which is reported already."""
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        # other parts are pydantic's own (a union's tag): stay on the same value
    values = node if isinstance(node, list) else [node]
    return any(isinstance(v, str) and v.startswith("env:") for v in values)


def _format(exc: ValidationError, prefix: tuple[Any, ...] = (), raw: Any = None) -> list[str]:
    out = []
    for err in exc.errors():
        if raw is not None and _unresolved(raw, (*prefix, *err["loc"])):
            continue  # a follow-on of an unset variable ("must start with whsec_"): only the cause is reported
        path = ""
        for part in (*prefix, *err["loc"]):
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        out.append(f"{path or '<root>'}: {err['msg']}")
    return out


def _apply_env_overrides(raw: dict[str, Any], env: Mapping[str, str], errors: list[str]) -> None:
    """`HCMC1022__HTTP__PORT=9000` sets http.port; values are parsed as JSON when they can be."""
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node: Any = raw
        for part in parts[:-1]:
            if isinstance(node, list):
                match = [x for x in node if isinstance(x, dict) and x.get("name") == part]
                if not match:
                    errors.append(f"{key}: no channel named {part!r} to override")
                    break
                node = match[0]
            else:
                # `channels` is a list addressed by name; an absent one must not become a table.
                node = node.setdefault(part, [] if node is raw and part == "channels" else {})
        else:
            try:
                parsed: Any = json.loads(value)
            except ValueError:
                parsed = value
            node[parts[-1]] = parsed


def _resolve_env_refs(node: Any, env: Mapping[str, str], path: tuple[Any, ...], errors: list[str]) -> None:
    """Replace `"env:NAME"` strings by the environment variable NAME, so secrets never sit in the file."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str) and value.startswith("env:"):
            name = value[4:]
            if name in env:
                node[key] = env[name]
            else:
                dotted = ".".join(str(p) for p in (*path, key))
                errors.append(f"{dotted}: environment variable {name} is not set")
        elif isinstance(value, (dict, list)):
            _resolve_env_refs(value, env, (*path, key), errors)
