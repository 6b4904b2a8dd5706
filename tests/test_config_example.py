"""config/example.toml, the documented configuration, as an administrator checks it: `run_daemon.py check-config`
accepts it once its secrets are in the environment, and names every missing variable in one run when they are not.
"""
from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "config" / "example.toml"


def env_refs(path: Path) -> set[str]:
    """Every `"env:NAME"` the file really uses (commented-out keys excluded)."""
    names: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        code = line.split("#", 1)[0]
        names.update(re.findall(r'"env:([A-Za-z_][A-Za-z0-9_]*)"', code))
    return names


def secrets_for(names: set[str]) -> dict[str, str]:
    """Plausible values: webhook secrets in Standard Webhooks form, a bot token as BotFather gives it."""
    values = {name: f"value-of-{name.lower()}" for name in names}
    for name in names:
        if name.endswith("WHSEC"):
            values[name] = "whsec_" + base64.b64encode(b"example-secret-0123456789abcdef").decode()
        if name.startswith("TELEGRAM"):
            values[name] = "123456:ABCdefGhIJKlmnoPQRstuVWXyz012345678"
    return values


def check_config(env: dict[str, str], path: Path = EXAMPLE) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("HCMC1022__") and k not in env_refs(EXAMPLE)}
    return subprocess.run([sys.executable, str(REPO / "run_daemon.py"), "check-config", str(path)], cwd=REPO,
                          env={**base, **env}, capture_output=True, text=True, timeout=120)


def test_example_uses_secrets_from_the_environment() -> None:
    # The documented file must show how secrets are given, for every kind that has one.
    assert {"SAWACO_WHSEC", "AGENCY_TOKEN_SAWACO", "TELEGRAM_BOT_TOKEN", "FB_APP_SECRET"} <= env_refs(EXAMPLE)


def test_example_validates_with_its_environment() -> None:
    result = check_config(secrets_for(env_refs(EXAMPLE)))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_every_missing_variable_is_reported_at_once() -> None:
    names = env_refs(EXAMPLE)
    result = check_config({})
    assert result.returncode == 2
    missing = set(re.findall(r"environment variable (\w+) is not set", result.stderr))
    assert missing == names, result.stderr
    # Only the causes: no follow-on complaint about the placeholder's format ("must start with 'whsec_'").
    problems = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert len(problems) == len(names), result.stderr
    assert "Traceback" not in result.stderr
    # With all but one set, only that one is named.
    values = secrets_for(names)
    values.pop("AGENCY_TOKEN_SAWACO")
    result = check_config(values)
    assert result.returncode == 2
    assert set(re.findall(r"environment variable (\w+) is not set", result.stderr)) == {"AGENCY_TOKEN_SAWACO"}
    assert "secrets.agency.sawaco" in result.stderr


def test_check_config_reads_the_agency_directory_the_file_names(tmp_path: Path) -> None:
    broken = tmp_path / "agencies.json"
    broken.write_text('{"agencies": [', encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        '[data]\n', f'[data]\nagencies = "{broken}"\n', 1), encoding="utf-8")
    result = check_config(secrets_for(env_refs(EXAMPLE)), config)
    assert result.returncode == 2, result.stdout
    assert str(broken) in result.stderr and "agency directory unreadable" in result.stderr


def test_a_webhook_the_ssrf_guard_refuses_is_a_configuration_error(tmp_path: Path) -> None:
    # Refused by check-config (and so at start and on reload), not retried for three days at every delivery.
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text(encoding="utf-8").replace(
        "https://api.sawaco.com.vn/1022/webhook", "http://169.254.169.254/latest/meta-data"), encoding="utf-8")
    result = check_config(secrets_for(env_refs(EXAMPLE)), config)
    assert result.returncode == 2, result.stdout
    assert "dispatch.agencies.sawaco.targets[0]" in result.stderr and "SSRF guard" in result.stderr
    assert "Traceback" not in result.stderr
