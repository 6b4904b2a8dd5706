"""Authentication-Results (RFC 8601) as evidence: only our relay's authserv-id counts, and only an aligned pass."""
from __future__ import annotations

import pytest

from channels.email_intake import subaddress_tags
from channels.mail_auth import parse_authentication_results, sender_verdict
from channels.smtp import base_address

TRUSTED = ["mx.tphcm.gov.vn"]
FROM = "dieuhanh@sawaco.com.vn"


def test_parse_real_relay_headers() -> None:
    # Shapes written by Postfix+OpenDKIM/OpenDMARC, Gmail and Exchange Online (comments, versions, folding).
    parsed = parse_authentication_results(
        "mx.tphcm.gov.vn 1; (comment; with semicolon)\r\n dkim=pass (2048-bit key) header.d=sawaco.com.vn"
        " header.s=s1 header.b=AbC;\r\n spf=pass (sender IP is 1.2.3.4) smtp.mailfrom=bounce@sawaco.com.vn;"
        " dmarc=pass action=none header.from=sawaco.com.vn")
    assert parsed is not None and parsed.authserv_id == "mx.tphcm.gov.vn"
    got = {r.method: (r.result, r.properties) for r in parsed.results}
    assert got["dkim"][0] == "pass" and got["dkim"][1]["header.d"] == "sawaco.com.vn"
    assert got["spf"][1]["smtp.mailfrom"] == "bounce@sawaco.com.vn"
    assert got["dmarc"] == ("pass", {"header.from": "sawaco.com.vn"})
    assert parse_authentication_results("") is None
    assert parse_authentication_results("x" * 10_000) is None  # bounded


@pytest.mark.parametrize(("headers", "verdict"), [
    ([], "none"),
    (["mx.evil.example; dmarc=pass header.from=sawaco.com.vn"], "none"),  # not our relay: ignored
    (["mx.tphcm.gov.vn; dmarc=pass header.from=sawaco.com.vn"], "pass"),
    (["mx.tphcm.gov.vn; dkim=pass header.d=sawaco.com.vn"], "pass"),
    (["mx.tphcm.gov.vn; dkim=pass header.i=@mail.sawaco.com.vn"], "pass"),  # relaxed alignment
    (["mx.tphcm.gov.vn; spf=pass smtp.mailfrom=sawaco.com.vn"], "pass"),
    (["mx.tphcm.gov.vn; spf=pass smtp.mailfrom=evil.example; dkim=pass header.d=evil.example"], "fail"),
    (["mx.tphcm.gov.vn; dmarc=pass header.from=evil.example"], "fail"),  # pass, but for another From
    (["mx.tphcm.gov.vn; dkim=fail header.d=sawaco.com.vn; spf=softfail smtp.mailfrom=sawaco.com.vn"], "fail"),
    (["mx.tphcm.gov.vn; none"], "fail"),  # our relay checked and found nothing: not a pass
    (["mx.tphcm.gov.vn; dkim=pass header.d=sawaco.com.vn; dmarc=fail header.from=sawaco.com.vn"], "fail"),
    # A forged pass below our relay's real verdict (which comes first, on top) does not win.
    (["mx.tphcm.gov.vn; spf=fail smtp.mailfrom=sawaco.com.vn",
      "mx.tphcm.gov.vn; dmarc=pass header.from=sawaco.com.vn"], "fail"),
    (["MX.TPHCM.GOV.VN; DMARC=Pass header.from=SAWACO.com.vn"], "pass"),  # case does not matter
    (["mx.tphcm.gov.vn; dkim=pass header.d=notsawaco.com.vn"], "fail"),  # a suffix is not a subdomain
])
def test_sender_verdict(headers: list[str], verdict: str) -> None:
    assert sender_verdict(headers, TRUSTED, FROM) == verdict


def test_no_from_is_never_a_pass() -> None:
    assert sender_verdict(["mx.tphcm.gov.vn; dmarc=pass"], TRUSTED, "") == "fail"


def test_reply_tokens_and_subaddresses() -> None:
    assert subaddress_tags(["tra-loi+msg_abc@tphcm.gov.vn", "<x+y@z>", "plain@tphcm.gov.vn", "a+@b"]) == ("msg_abc", "y")
    assert base_address("<Tra-Loi+msg_abc@TPHCM.gov.vn>") == "tra-loi@tphcm.gov.vn"
