"""Contact details found inside free text: Vietnamese phone numbers and email addresses."""
from __future__ import annotations

import re

# 0xx xxxx xxx with optional separators, or +84 / 84 prefix; 10 digits once normalised.
PHONE = re.compile(r"(?<![\d])(?:\+?84[\s.\-]?|0)(?:\d[\s.\-]?){8}\d(?![\d])")
EMAIL = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9.\-]+\.[A-Za-z]{2,}")


def normalize_phone(raw: str) -> str | None:
    digits = re.sub(r"\D", "", raw)
    if digits.startswith("84") and len(digits) == 11:
        digits = "0" + digits[2:]
    return digits if len(digits) == 10 and digits.startswith("0") else None


def find_phones(text: str) -> list[str]:
    out = []
    for m in PHONE.finditer(text):
        phone = normalize_phone(m.group())
        if phone and phone not in out:
            out.append(phone)
    return out


def find_emails(text: str) -> list[str]:
    return list(dict.fromkeys(m.group().lower() for m in EMAIL.finditer(text)))

# Redaction for anything public lives in ingest/pii.py (one redactor for every kind of personal data).
