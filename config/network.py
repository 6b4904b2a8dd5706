"""Which network destinations an outbound request may reach (the SSRF rule), as pure functions.

One definition for the config check (a webhook or SMS gateway URL that names a private address is a configuration
error, reported by check-config, at start and on reload) and for the guard at connection time
(dispatch/ssrf.py), which also checks what a name resolves to when the request is made.
"""
from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


def address_allowed(address: str) -> bool:
    """A public unicast address (IPv4-mapped IPv6 judged as the IPv4 inside it)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast
                                 or ip.is_reserved or ip.is_unspecified)


def refused_host(url: str) -> str | None:
    """Why the URL's host is refused without looking it up (an address or a loopback name), else None."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return f"{host} is a loopback name"
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None  # a name: what it resolves to is checked when connecting
    return None if address_allowed(host) else f"{host} is not a public address"
