"""[store]: SQLite by default, PostgreSQL by url (a secret from the environment), blobs where instances share them."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load
from ingest.errors import ConfigError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_without_url_the_store_is_the_sqlite_file(tmp_path: Path) -> None:
    store = load(_write(tmp_path, "[store]\npath = 'x.sqlite3'\n"), env={}).store
    assert store.url is None and store.path == Path("x.sqlite3")
    assert not store.blobs_in_database


def test_url_from_the_environment_keeps_blobs_in_the_database(tmp_path: Path) -> None:
    url = "postgresql://app:s3cret-pw@db.example:5432/hcmc1022"
    store = load(_write(tmp_path, "[store]\nurl = 'env:STORE_URL'\n"), env={"STORE_URL": url}).store
    assert store.url is not None and store.url.get_secret_value() == url
    assert "s3cret-pw" not in repr(store)  # a password never reaches a log through the settings' repr
    assert store.blobs_in_database


def test_shared_directory_blobs_on_postgresql(tmp_path: Path) -> None:
    store = load(_write(tmp_path, "[store]\nurl = 'postgresql://a@h/d'\nblobs = 'directory'\n"), env={}).store
    assert not store.blobs_in_database


def test_a_url_that_is_not_postgresql_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_write(tmp_path, "[store]\nurl = 'mysql://root:hunter2@h/d'\n"), env={})
    assert "store.url" in str(exc.value) and "PostgreSQL URL" in str(exc.value)
    assert "hunter2" not in str(exc.value)


def test_database_blobs_need_a_postgresql_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_write(tmp_path, "[store]\nblobs = 'database'\n"), env={})
    assert "needs a PostgreSQL url" in str(exc.value)


def test_an_environment_override_sets_the_url(tmp_path: Path) -> None:
    env = {"HCMC1022__STORE__URL": "postgresql://postgres@127.0.0.1:5432/x"}
    store = load(_write(tmp_path, ""), env=env).store
    assert store.url is not None and store.url.get_secret_value().endswith("/x")
