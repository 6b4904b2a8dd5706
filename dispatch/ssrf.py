"""The SSRF guard for outbound HTTP: only public addresses, unless a target is explicitly allowed.

Checked where the connection is made (a resolver that refuses private answers), so a name that resolves to
127.0.0.1 or 169.254.169.254 at send time is refused even if it looked public when configured. IP-literal URLs
skip resolvers in aiohttp, so they are checked before the request.
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from ingest.errors import PermanentError


class BlockedAddress(PermanentError):
    """The target resolves to an address the guard forbids."""


def address_allowed(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def check_url(url: str, allow_private: bool) -> None:
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        if host.lower() in ("localhost",) and not allow_private:
            raise BlockedAddress(f"{host} is a loopback name") from None
        return  # a name: the resolver checks what it resolves to
    if not allow_private and not address_allowed(host):
        raise BlockedAddress(f"{host} is not a public address")


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

