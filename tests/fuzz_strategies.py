"""Hypothesis strategies for hostile input on every channel, shared by the standing fuzz suite
(tests/test_fuzz_intake.py, a few thousand inputs) and bench/bench_fuzz.py (100,000 and more).

Each strategy mixes well-formed input (so the deep paths run) with what breaks parsers: lone surrogates, control
characters, CR/LF in one-line fields, nesting, unknown charsets, truncation and byte flips of real samples.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from hypothesis import strategies as st

CORPUS = Path(__file__).parent / "channels" / "corpus" / "email"
EMAIL_SAMPLES = [p.read_bytes() for p in sorted(CORPUS.glob("*.eml"))]
SERVICE_CODES = ["drainage", "street_lighting", "unicorns", "", "road_damage"]
NASTY = ["\ud800", "\udfff", "\x00", "\r\n", "\n", "\u2028", "\x85", "\ufeff", "\U0001F600", "ổ gà", "'\"<>&",
         "=?utf-8?q?a=0D=0Ab?=", "%00", "\\u0000"]

# Descriptions that once made the redactor (ingest/pii.py) quadratic or worse, each as a text of about n characters:
# "1-1-1-…" took 11-15 s at 20,000 characters (the longest description intake takes), one long word 2.3 s (the
# e-mail patterns were tried from every position of a run); a handle of "aaa…ab" made a repeated-syllable pattern
# backtrack. tests/ingest/test_pii.py counts the work they cost, bench/bench_redact.py times them.
ADVERSARIAL_DESCRIPTIONS = {
    "dashes": lambda n: "1-" * (n // 2),
    "one word": lambda n: "a" * n,
    "pluses": lambda n: "1+" * (n // 2),
    "dashes, then an address": lambda n: "x-" * (n // 2) + "x@y.vn",
    "a handle of aaa…ab, then an address": lambda n: "fb: " + ("a" * 29 + "b ") * (n // 31) + "x@y.vn",
}

nasty_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), max_size=6).map("".join),
    st.text(st.characters(codec="utf-8"), max_size=200),
)
json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), nasty_text)
json_value = st.recursive(json_scalar, lambda c: st.one_of(st.lists(c, max_size=4),
                                                           st.dictionaries(nasty_text, c, max_size=4)),
                          max_leaves=8)


def _dumps(value: Any) -> bytes:
    # ensure_ascii keeps lone surrogates as \ud800 escapes (what a hostile client sends); never fails.
    return json.dumps(value, ensure_ascii=True).encode()


def _deep(depth: int) -> bytes:
    return b'{"service_code": "drainage", "description": ' + b"[" * depth + b"]" * depth + b"}"


open311_fields = st.fixed_dictionaries(
    {"service_code": st.sampled_from(SERVICE_CODES), "description": nasty_text},
    optional={"lat": st.one_of(st.floats(), nasty_text), "long": st.one_of(st.floats(), nasty_text),
              "address_string": nasty_text, "first_name": nasty_text, "last_name": nasty_text,
              "email": nasty_text, "phone": nasty_text, "device_id": nasty_text, "confidential": json_scalar,
              "extra": json_value})


@st.composite
def multipart_body(draw: st.DrawFn) -> tuple[bytes, str]:
    boundary = draw(st.sampled_from(["b", "----WebKitFormBoundary7MA4YWxkTrZu0gW", "x" * 70]))
    fields = draw(open311_fields)
    parts = []
    for name, value in fields.items():
        charset = draw(st.sampled_from(["", "; charset=utf-8", "; charset=rot13", "; charset=x-unknown",
                                        "; charset=windows-1258", "; charset=utf-7"]))
        text = value if isinstance(value, str) else json.dumps(value)
        data = text.encode("utf-8", "surrogatepass")
        parts.append(f'Content-Disposition: form-data; name="{name}"\r\nContent-Type: text/plain{charset}\r\n\r\n'
                     .encode() + data)
    for _ in range(draw(st.integers(0, 3))):
        filename = draw(st.sampled_from(['"a.jpg"', '"\xe1\xbb\x95 g\xc3\xa0.png"', '""', "x", '"../../etc/passwd"']))
        ctype = draw(st.sampled_from(["image/jpeg", "text/html", "application/octet-stream", ""]))
        parts.append(f"Content-Disposition: form-data; name=\"media\"; filename={filename}\r\n"
                     f"Content-Type: {ctype}\r\n\r\n".encode("utf-8", "surrogatepass") + draw(st.binary(max_size=64)))
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts)
    body += b"--" + boundary.encode() + b"--\r\n"
    cut = draw(st.sampled_from([None, None, None, len(body) // 2, 10]))
    if cut is not None:
        body = body[:cut]
    return body, f"multipart/form-data; boundary={boundary}"


@st.composite
def open311_body(draw: st.DrawFn) -> tuple[bytes, str]:
    """(body, Content-Type) of an Open311 POST."""
    kind = draw(st.sampled_from(["json", "json", "form", "form", "multipart", "raw", "deep"]))
    if kind == "json":
        value = draw(st.one_of(open311_fields, json_value))
        return _dumps(value), draw(st.sampled_from(["application/json", "application/json; charset=utf-8"]))
    if kind == "form":
        fields = draw(open311_fields)
        encoded = urlencode({k: (v if isinstance(v, str) else json.dumps(v)).encode("utf-8", "surrogatepass")
                             for k, v in fields.items()})
        return encoded.encode(), "application/x-www-form-urlencoded"
    if kind == "multipart":
        return draw(multipart_body())
    if kind == "deep":
        return _deep(draw(st.integers(1, 3000))), "application/json"
    ctype = draw(st.sampled_from(["application/json", "multipart/form-data", "multipart/form-data; boundary=",
                                  "text/plain", "", "application/x-www-form-urlencoded", "image/png"]))
    return draw(st.binary(max_size=512)), ctype


@st.composite
def mutated_email(draw: st.DrawFn) -> bytes:
    """A real sample (or random bytes) truncated, with bytes flipped or headers injected."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=2048))
    raw = bytearray(draw(st.sampled_from(EMAIL_SAMPLES)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "header"]))
        pos = draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del raw[pos:]
        elif op == "insert":
            raw[pos:pos] = draw(st.sampled_from([b"\r\n", b"\r\n\r\n", b"--", b"=?utf-8?b?", b"\x00", b"\xff\xfe",
                                                 b"Content-Type: multipart/mixed; boundary=zz\r\n",
                                                 b"Content-Type: text/plain; charset=rot13\r\n"]))
        else:
            name = draw(st.sampled_from(["Subject", "From", "Reply-To", "References", "Content-Type",
                                         "Content-Transfer-Encoding", "In-Reply-To"]))
            value = draw(nasty_text).encode("utf-8", "surrogatepass")
            raw[0:0] = name.encode() + b": " + value + b"\r\n"
    return bytes(raw)


messenger_event = st.fixed_dictionaries(
    {"sender": st.one_of(st.fixed_dictionaries({"id": nasty_text}), json_value),
     "message": st.one_of(st.fixed_dictionaries({"mid": nasty_text},
                                                optional={"text": nasty_text, "is_echo": st.booleans(),
                                                          "attachments": json_value}), json_value)},
    optional={"recipient": json_value, "timestamp": st.one_of(st.integers(), nasty_text, st.floats())})


@st.composite
def messenger_body(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 7)) == 0:
        return draw(st.one_of(st.binary(max_size=256), st.just(_deep(2000))))
    body = {"object": draw(st.sampled_from(["page", "page", "page", "user", 3])),
            "entry": [{"id": draw(nasty_text), "time": 1, "messaging": draw(st.lists(messenger_event, max_size=3))}
                      for _ in range(draw(st.integers(0, 2)))]}
    if draw(st.booleans()):
        body["extra"] = draw(json_value)
    return _dumps(body)


telegram_update = st.fixed_dictionaries(
    {"update_id": st.one_of(st.integers(-10, 2**63), nasty_text, st.none())},
    optional={"message": st.one_of(json_value, st.fixed_dictionaries(
        {"message_id": st.integers(), "chat": st.one_of(st.fixed_dictionaries({"id": st.integers()}), json_value)},
        optional={"text": nasty_text, "from": json_value, "date": st.one_of(st.integers(), nasty_text),
                  "location": json_value, "contact": json_value, "photo": json_value}))})

transcript_raw = st.one_of(
    st.binary(max_size=512),
    st.builds(lambda v: _dumps(v), st.one_of(json_value, st.fixed_dictionaries(
        {"text": nasty_text}, optional={"reporter": json_value, "received_at": nasty_text, "lat": json_scalar,
                                        "lon": json_scalar, "call_id": nasty_text}))),
    st.lists(st.tuples(st.sampled_from(["Name", "Phone", "Email", "Received-At", "Lat", "Lon", "X"]), nasty_text),
             max_size=5).map(lambda kv: ("\n".join(f"{k}: {v}" for k, v in kv) + "\n\nalo đèn tắt")
                             .encode("utf-8", "surrogatepass")),
)
