"""Who really sent a mail, as far as a trusted relay could tell: `Authentication-Results` (RFC 8601) parsing.

A mail's `From` is a claim anyone can write. Our own inbound relay (the MX in front of the SMTP listener, or the
mail server the IMAP poller reads) checks SPF, DKIM and DMARC and stamps the verdict in an
`Authentication-Results` header under its own authserv-id; it removes any header carrying that id that arrived
from outside (RFC 8601 §5), so only a header with an id listed in the channel's `trusted_authserv_ids` is
evidence. Headers from any other id were written by someone we do not trust and are ignored.

Pure functions, no I/O. `sender_verdict` says:
  "pass"  the topmost trusted header shows DMARC pass for the From domain, or DKIM/SPF pass aligned with it;
  "fail"  a trusted header exists but shows no aligned pass (or DMARC fail);
  "none"  no trusted header at all: the deployment cannot know (or the mail bypassed the relay).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["pass", "fail", "none"]

_COMMENT = re.compile(r"\([^()]*\)")
_METHOD = re.compile(r"^\s*([a-z0-9_-]+)\s*(?:/\s*\d+)?\s*=\s*([a-z0-9_-]+)(.*)$", re.IGNORECASE | re.DOTALL)
_PROPERTY = re.compile(r"([a-z0-9_-]+)\.([a-z0-9_.-]+)\s*=\s*(\"[^\"]*\"|[^\s;]+)", re.IGNORECASE)
MAX_HEADER_CHARS = 8192  # a verdict never needs more; longer values are not parsed (bounded work per header)


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodResult:
    method: str  # spf, dkim, dmarc, ...
    result: str  # pass, fail, softfail, none, ...
    properties: dict[str, str]  # "header.d" -> "sawaco.com.vn", "smtp.mailfrom" -> "x@sawaco.com.vn"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthResults:
    authserv_id: str
    results: tuple[MethodResult, ...]


def _strip_comments(value: str) -> str:
    # Nested comments are rare; three passes remove up to three levels, enough for real relays.
    for _ in range(3):
        value = _COMMENT.sub(" ", value)
    return value


def parse_authentication_results(value: str) -> AuthResults | None:
    """One header value; None when it is not even shaped like `authserv-id; method=result ...`."""
    if not value or len(value) > MAX_HEADER_CHARS:
        return None
    parts = _strip_comments(value).replace("\r", " ").replace("\n", " ").split(";")
    head = parts[0].split()
    if not head:
        return None
    authserv_id = head[0].strip().lower()
    results: list[MethodResult] = []
    for part in parts[1:]:
        match = _METHOD.match(part)
        if match is None:
            continue  # "none" (no checks run), or something we cannot read: it proves nothing
        props = {f"{m.group(1).lower()}.{m.group(2).lower()}": m.group(3).strip('"').lower()
                 for m in _PROPERTY.finditer(match.group(3))}
        results.append(MethodResult(method=match.group(1).lower(), result=match.group(2).lower(), properties=props))
    return AuthResults(authserv_id=authserv_id, results=tuple(results))


def _domain(value: str) -> str:
    return value.rpartition("@")[2].strip().strip(".").lower()


def aligned(a: str, b: str) -> bool:
    """Relaxed alignment (DMARC): the same domain, or one a subdomain of the other."""
    a, b = _domain(a), _domain(b)
    return bool(a and b) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def _passes(results: Iterable[MethodResult], from_domain: str) -> tuple[bool, bool]:
    """(an aligned pass, a DMARC fail) among one header's results."""
    ok = failed = False
    for r in results:
        if r.method == "dmarc":
            target = r.properties.get("header.from", from_domain)
            if r.result == "pass" and aligned(target, from_domain):
                ok = True
            elif r.result in ("fail", "quarantine", "reject"):
                failed = True
        elif r.method == "dkim" and r.result == "pass":
            signer = r.properties.get("header.d") or _domain(r.properties.get("header.i", ""))
            ok = ok or (bool(signer) and aligned(signer, from_domain))
        elif r.method == "spf" and r.result == "pass":
            mailfrom = r.properties.get("smtp.mailfrom") or r.properties.get("smtp.helo", "")
            ok = ok or (bool(mailfrom) and aligned(mailfrom, from_domain))
    return ok, failed


def sender_verdict(headers: Sequence[str], trusted_ids: Iterable[str], from_addr: str) -> Verdict:
    """The verdict on `from_addr` from the `Authentication-Results` headers in top-to-bottom order."""
    trusted = {t.strip().lower() for t in trusted_ids if t.strip()}
    from_domain = _domain(from_addr)
    ours = [p for p in (parse_authentication_results(h) for h in headers) if p and p.authserv_id in trusted]
    if not ours:
        return "none"
    if not from_domain:
        return "fail"
    # The topmost trusted header is the one our relay added last; any DMARC fail in a trusted header wins.
    if any(_passes(h.results, from_domain)[1] for h in ours):
        return "fail"
    return "pass" if _passes(ours[0].results, from_domain)[0] else "fail"
