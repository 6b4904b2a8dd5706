"""Config loading: every problem reported at once with its key path, env overrides, env: secrets, no extras."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.channels import Open311Options
from config.loader import channel_options, load
from ingest.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return [line.strip()[2:] for line in str(exc.value).splitlines() if line.strip().startswith("- ")]


BROKEN = """
[http]
port = "not a port"

[queue]
max_attempts = 0

[store]
pth = "typo.sqlite3"

[[channels]]
kind = "open311"
name = "app"
max_photos = -1

[[channels]]
kind = "carrier-pigeon"
name = "roof"
"""


def test_every_error_is_reported_at_once_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load(_write(tmp_path, BROKEN), env={})
    problems = _problems(exc)
    assert str(tmp_path / "config.toml") in str(exc.value)
    paths = sorted(p.split(":")[0] for p in problems)
    assert paths == ["channels[0].max_photos", "channels[1].kind", "http.port", "queue.max_attempts", "store.pth"]
    assert any("carrier-pigeon" in p and "open311" in p for p in problems)  # says which kinds exist


def test_the_embedded_default_config_is_valid() -> None:
    settings = load(None, env={})
    assert settings.http.host == "127.0.0.1" and settings.http.port == 8022
    assert str(settings.store.path).startswith("var/")
    assert [c.kind for c in settings.channels] == ["open311", "transcripts"]


def test_extra_keys_are_forbidden_everywhere(tmp_path: Path) -> None:
    text = "[htpp]\nport = 1\n[http]\nprot = 9000\n[[channels]]\nkind='transcripts'\nname='cc'\nfoldr='x'\n"
    with pytest.raises(ConfigError) as exc:
        load(_write(tmp_path, text), env={})
    problems = _problems(exc)
    assert len(problems) == 3
    assert {p.split(":")[0] for p in problems} == {"htpp", "http.prot", "channels[0].foldr"}
    assert all("Extra inputs are not permitted" in p for p in problems)


def test_duplicate_channel_names(tmp_path: Path) -> None:
    text = "[[channels]]\nkind='open311'\nname='app'\n[[channels]]\nkind='transcripts'\nname='app'\n"
    with pytest.raises(ConfigError, match=r"channels\[1\]\.name: duplicate channel name 'app'"):
        load(_write(tmp_path, text), env={})


def test_environment_overrides_a_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "[http]\nport = 8022\n[[channels]]\nkind='open311'\nname='app'\n")
    settings = load(path, env={"HCMC1022__HTTP__PORT": "9000", "HCMC1022__QUEUE__LEASE_SECONDS": "2.5",
                               "HCMC1022__CHANNELS__app__MAX_PHOTOS": "3", "HCMC1022__STORE__PATH": "/tmp/x.db",
                               "UNRELATED": "1"})
    assert settings.http.port == 9000
    assert settings.queue.lease_seconds == 2.5
    assert str(settings.store.path) == "/tmp/x.db"
    options = channel_options(settings.channels[0])
    assert isinstance(options, Open311Options) and options.max_photos == 3


def test_a_bad_override_is_reported_with_the_rest(tmp_path: Path) -> None:
    path = _write(tmp_path, "[queue]\nbatch = 0\n")
    with pytest.raises(ConfigError) as exc:
        load(path, env={"HCMC1022__HTTP__PORT": "99999", "HCMC1022__CHANNELS__nope__MAX_PHOTOS": "3"})
    paths = sorted(p.split(":")[0] for p in _problems(exc))
    assert paths == ["HCMC1022__CHANNELS__nope__MAX_PHOTOS", "http.port", "queue.batch"]


def test_env_secret_is_read_and_never_printed(tmp_path: Path) -> None:
    path = _write(tmp_path, "[secrets]\nsms_gateway = 'env:SMS_TOKEN'\n"
                            "[[channels]]\nkind='open311'\nname='app'\napi_keys=['env:APP_KEY']\n")
    settings = load(path, env={"SMS_TOKEN": "s3cr3t-token", "APP_KEY": "k-123"})
    assert settings.secrets["sms_gateway"].get_secret_value() == "s3cr3t-token"
    assert "s3cr3t-token" not in repr(settings) and "s3cr3t-token" not in str(settings)
    options = channel_options(settings.channels[0])
    assert isinstance(options, Open311Options)
    assert [k.get_secret_value() for k in options.api_keys] == ["k-123"]


def test_overrides_are_typed_by_the_schema(tmp_path: Path) -> None:
    """Digits stay text where the schema says text (an SMS sender id, a secret), and are numbers where it says so."""
    path = _write(tmp_path, "[[channels]]\nkind='open311'\nname='app'\n")
    settings = load(path, env={"HCMC1022__DISPATCH__SMS__SENDER": "1022", "HCMC1022__SECRETS__PIN": "0042",
                               "HCMC1022__OPS__METRICS_TOKEN": "123456", "HCMC1022__HTTP__PORT": "9000",
                               "HCMC1022__LOGGING__FORMAT": "json", "HCMC1022__CHANNELS__app__MAX_PHOTOS": "3",
                               "HCMC1022__CONSOLE__ENABLED": "false"})
    from config.console import console_settings
    from config.dispatch import dispatch_settings
    from config.ops import ops_settings

    assert dispatch_settings(settings).sms.sender == "1022"
    assert settings.secrets["pin"].get_secret_value() == "0042"  # not the number 42
    metrics_token = ops_settings(settings).metrics_token
    assert metrics_token is not None and metrics_token.get_secret_value() == "123456"
    assert settings.http.port == 9000 and settings.logging.format == "json"
    assert channel_options(settings.channels[0]).max_photos == 3  # type: ignore[attr-defined]
    assert console_settings(settings).enabled is False


def test_secrets_from_files_and_systemd_credentials(tmp_path: Path) -> None:
    (tmp_path / "sms.token").write_text("tok-from-file\n", encoding="utf-8")
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "app-key").write_text("k-from-systemd", encoding="utf-8")
    path = _write(tmp_path, f"[secrets]\nsms_gateway = 'file:{tmp_path / 'sms.token'}'\n"
                            "[[channels]]\nkind='open311'\nname='app'\napi_keys=['credential:app-key']\n")
    settings = load(path, env={"CREDENTIALS_DIRECTORY": str(creds)})
    assert settings.secrets["sms_gateway"].get_secret_value() == "tok-from-file"  # final newline dropped
    options = channel_options(settings.channels[0])
    assert [k.get_secret_value() for k in options.api_keys] == ["k-from-systemd"]  # type: ignore[attr-defined]
    # Missing sources are reported with the rest, by key path.
    path = _write(tmp_path, f"[secrets]\na = 'file:{tmp_path / 'nope'}'\nb = 'credential:x'\nc = 'credential:../etc'\n")
    with pytest.raises(ConfigError) as exc:
        load(path, env={})
    problems = _problems(exc)
    assert any(p.startswith("secrets.a: secret file") for p in problems)
    assert any(p.startswith("secrets.b: credential x asked for, but CREDENTIALS_DIRECTORY") for p in problems)
    with pytest.raises(ConfigError, match="secrets.c: '../etc' is not a credential name"):
        load(path, env={"CREDENTIALS_DIRECTORY": str(creds)})


def test_missing_secret_variables_are_all_reported(tmp_path: Path) -> None:
    path = _write(tmp_path, "[secrets]\na = 'env:MISSING_ONE'\nb = 'env:MISSING_TWO'\n[http]\nport = -1\n")
    with pytest.raises(ConfigError) as exc:
        load(path, env={})
    problems = _problems(exc)
    assert "secrets.a: environment variable MISSING_ONE is not set" in problems
    assert "secrets.b: environment variable MISSING_TWO is not set" in problems
    assert any(p.startswith("http.port:") for p in problems)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load(tmp_path / "absent.toml", env={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(_write(tmp_path, "[http\nport = 1\n"), env={})


# -- run_daemon.py check-config, as an administrator runs it ----------------------------------------------
def _check(path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "run_daemon.py"), "check-config", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", **env})


def test_check_config_accepts_a_valid_file(tmp_path: Path) -> None:
    result = _check(_write(tmp_path, "[http]\nport = 9100\n[[channels]]\nkind='open311'\nname='app'\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith(": OK")


def test_check_config_lists_every_problem_and_exits_2(tmp_path: Path) -> None:
    result = _check(_write(tmp_path, BROKEN))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    for path in ("http.port", "queue.max_attempts", "store.pth", "channels[0].max_photos", "channels[1].kind"):
        assert path in result.stderr
    assert result.stdout == ""


def test_check_config_reports_missing_env_secret(tmp_path: Path) -> None:
    path = _write(tmp_path, "[secrets]\ntoken = 'env:HCMC_TEST_TOKEN'\n")
    missing = _check(path)
    assert missing.returncode == 2 and "HCMC_TEST_TOKEN is not set" in missing.stderr
    assert _check(path, HCMC_TEST_TOKEN="x").returncode == 0


def test_check_config_on_a_missing_file(tmp_path: Path) -> None:
    result = _check(tmp_path / "nope.toml")
    assert result.returncode == 2 and "file not found" in result.stderr and "Traceback" not in result.stderr
