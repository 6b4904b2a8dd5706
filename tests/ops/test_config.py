"""The [ops] section: validated at load with the other sections, every mistake reported with its key path."""
from __future__ import annotations

import pytest

from config.loader import validate
from config.ops import ops_settings
from ingest.errors import ConfigError


def test_a_valid_section_is_typed() -> None:
    settings = validate({"ops": {"weekly_send": True, "agencies": {"so-gtvt": {
        "leadership_email": ["lanhdao@sogtvt.example.gov.vn"], "leadership_phone": ["+84900000000"]}},
        "smtp": {"host": "relay.example.gov.vn", "port": 587, "starttls": True, "password": "env:OPS_SMTP"}}},
        env={"OPS_SMTP": "s3cret"})
    cfg = ops_settings(settings)
    assert cfg.weekly_send and cfg.agencies["so-gtvt"].leadership_phone == ["+84900000000"]
    assert cfg.smtp is not None and cfg.smtp.password is not None and cfg.smtp.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(cfg)


def test_mistakes_are_reported_together_with_their_paths() -> None:
    with pytest.raises(ConfigError) as err:
        validate({"ops": {"weekly_sendd": True, "weekly_send_hour": 24, "agencies": {
            "so-gtvt": {"leadership_email": ["not an address"], "leadership_phone": ["0903-123"]}}}}, env={})
    message = str(err.value)
    for path in ("ops.weekly_sendd", "ops.weekly_send_hour", "ops.agencies.so-gtvt.leadership_email",
                 "ops.agencies.so-gtvt.leadership_phone"):
        assert path in message
