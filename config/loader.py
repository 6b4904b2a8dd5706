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
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr, ValidationError

from .channels import CHANNEL_MODELS, ChannelEntry, ChannelOptions
from .errors import ConfigError
from .schema import Settings

ENV_PREFIX = "HCMC1022__"
DEFAULT_PATH = Path(__file__).with_name("default.toml")

# Sections validated by a model owned by a later stage: name -> model class (registered at import).
EXTRA_SECTIONS: dict[str, type[BaseModel]] = {}


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    return load_text(read(path), path, env)


def read(path: Path | None = None) -> str:
    """The config file's text (the embedded default without a path)."""
    source = Path(path) if path else DEFAULT_PATH
    try:
        return source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: file not found") from None


def load_text(text: str, path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from a config file's text, as read once (`serve` validates the text it then hands its workers
    process, so the two never read different versions of a file being edited); `path` names it in errors."""
    env = os.environ if env is None else env
    source = Path(path) if path else DEFAULT_PATH
    try:
        raw = tomllib.loads(text)
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
    """True when `loc` reaches a secret reference still in place: its source is missing, reported already."""
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        # other parts are pydantic's own (a union's tag): stay on the same value
    values = node if isinstance(node, list) else [node]
    return any(isinstance(v, str) and v.startswith(("env:", "file:", "credential:")) for v in values)


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
    """`HCMC1022__HTTP__PORT=9000` sets http.port. The value is read as the schema types that key: kept as
    text where the key is a string (`HCMC1022__DISPATCH__SMS__SENDER=1022` stays "1022"), parsed as JSON
    elsewhere (numbers, booleans, lists, tables), and as JSON, else text, where the schema says nothing."""
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if not parts:
            continue
        node: Any = raw
        channel: dict[str, Any] | None = None
        for part in parts[:-1]:
            if isinstance(node, list):
                match = [x for x in node if isinstance(x, dict) and x.get("name") == part]
                if not match:
                    errors.append(f"{key}: no channel named {part!r} to override")
                    break
                node = channel = match[0]
            else:
                # `channels` is a list addressed by name; an absent one must not become a table.
                node = node.setdefault(part, [] if node is raw and part == "channels" else {})
        else:
            node[parts[-1]] = _typed(value, _annotation(parts, channel))


def _annotation(parts: Sequence[str], channel: Mapping[str, Any] | None) -> Any:
    """The schema's type for the key at `parts`, or None when no model declares it."""
    if parts[0] == "channels":
        model = CHANNEL_MODELS.get(str(channel.get("kind"))) if channel is not None else None
        names: Sequence[str] = parts[2:]
        if model is None or len(names) != 1:
            return None
        fields = {**ChannelEntry.model_fields, **model.model_fields}
        return fields[names[0]].annotation if names[0] in fields else None
    model: Any = EXTRA_SECTIONS.get(parts[0]) or Settings.model_fields.get(parts[0], None)
    annotation = model if isinstance(model, type) else getattr(model, "annotation", None)
    for name in parts[1:]:
        if get_origin(annotation) is dict:  # a table of values keyed by the admin's names (agencies, secrets)
            annotation = get_args(annotation)[1]
            continue
        model = _model_in(annotation)
        if model is None or name not in model.model_fields:
            return None
        annotation = model.model_fields[name].annotation
    return annotation


def _model_in(annotation: Any) -> Any:
    """The pydantic model an annotation holds (itself, or inside Optional/Union), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _is_text(annotation: Any) -> bool:
    """True when the key takes a string only: str, SecretStr, Path, a Literal of strings, or one of them | None."""
    if annotation in (str, SecretStr, Path):
        return True
    if get_origin(annotation) is Literal:
        return all(isinstance(a, str) for a in get_args(annotation))
    if get_origin(annotation) in (Union, UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return bool(options) and all(_is_text(a) for a in options)
    return False


def _typed(value: str, annotation: Any) -> Any:
    if _is_text(annotation):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _resolve_env_refs(node: Any, env: Mapping[str, str], path: tuple[Any, ...], errors: list[str]) -> None:
    """Replace secret references, so secrets never sit in the file:
    - `"env:NAME"`: the environment variable NAME;
    - `"file:PATH"`: the file's content without its final newline (a mounted secret, a 0600 file);
    - `"credential:NAME"`: the systemd credential NAME (`LoadCredential=`/`SetCredential=` in the unit), read
      from `$CREDENTIALS_DIRECTORY/NAME`."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in list(items):
        if isinstance(value, str) and value.startswith(("env:", "file:", "credential:")):
            dotted = ".".join(str(p) for p in (*path, key))
            kind, _, name = value.partition(":")
            if kind == "env":
                if name in env:
                    node[key] = env[name]
                else:
                    errors.append(f"{dotted}: environment variable {name} is not set")
                continue
            if kind == "credential":
                directory = env.get("CREDENTIALS_DIRECTORY")
                if not directory:
                    errors.append(f"{dotted}: credential {name} asked for, but CREDENTIALS_DIRECTORY is not set "
                                  "(LoadCredential= in the systemd unit)")
                    continue
                if not name or "/" in name or name in (".", ".."):
                    errors.append(f"{dotted}: {name!r} is not a credential name")
                    continue
                file = Path(directory) / name
            else:
                file = Path(name)
            try:
                node[key] = file.read_text(encoding="utf-8").removesuffix("\n").removesuffix("\r")
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"{dotted}: secret file {file} unreadable ({type(exc).__name__})")
        elif isinstance(value, (dict, list)):
            _resolve_env_refs(value, env, (*path, key), errors)
