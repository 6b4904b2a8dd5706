"""The SSRF guard for outbound HTTP: only public addresses, unless a target is explicitly allowed.

Checked where the connection is made (a resolver that refuses private answers), so a name that resolves to
127.0.0.1 or 169.254.169.254 at send time is refused even if it looked public when configured. IP-literal URLs
skip resolvers in aiohttp, so they are checked before the request.
"""
from __future__ import annotations

import ipaddress
import socket
import threading
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from config.dispatch import DispatchConfig, WebhookTarget
from config.network import address_allowed, refused_host
from ingest.errors import PermanentError


class BlockedAddress(PermanentError):
    """The target resolves to an address the guard forbids."""


def check_url(url: str, allow_private: bool) -> None:
    if not allow_private and (reason := refused_host(url)) is not None:
        raise BlockedAddress(reason)


def resolved_problems(url: str, allow_private: bool, timeout: float = 5.0) -> str | None:
    """At start, reload and check-config: a name that resolves to a non-public address is a configuration error
    (it would be refused at every attempt). A name that does not resolve now is not: DNS may come back."""
    if allow_private:
        return None
    if (reason := refused_host(url)) is not None:
        return reason
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        return None  # a public address literal
    except ValueError:
        pass
    done: list[list[str]] = []

    def lookup() -> None:
        try:
            done.append([str(info[4][0]) for info in socket.getaddrinfo(host, None)])
        except OSError:
            done.append([])

    worker = threading.Thread(target=lookup, daemon=True)  # getaddrinfo has no timeout of its own
    worker.start()
    worker.join(timeout)
    bad = [a for a in (done[0] if done else []) if not address_allowed(a)]
    return f"{host} resolves to a non-public address ({bad[0]})" if bad else None


def target_problems(cfg: DispatchConfig) -> list[str]:
    """Every configured endpoint the SSRF guard would refuse, with its key path (check-config, start, reload)."""
    problems = []
    for agency, a in cfg.agencies.items():
        for i, target in enumerate(a.targets):
            if isinstance(target, WebhookTarget):
                reason = resolved_problems(target.url, target.allow_private)
                if reason:
                    problems.append(f"dispatch.agencies.{agency}.targets[{i}].url: {reason} (SSRF guard)")
    if cfg.sms.url and (reason := resolved_problems(cfg.sms.url, cfg.sms.allow_private)):
        problems.append(f"dispatch.sms.url: {reason} (SSRF guard)")
    return problems


class GuardedResolver(AbstractResolver):
    def __init__(self, allow_private: bool) -> None:
        self._inner = ThreadedResolver()
        self._allow_private = allow_private

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private:
            bad = [r["host"] for r in results if not address_allowed(r["host"])]
            if bad:
                raise BlockedAddress(f"{host} resolves to a non-public address")
        return results

    async def close(self) -> None:
        await self._inner.close()

