"""SSRF guard for outbound calls: a URL's target is allowed only when every address its host
resolves to is public (docs/webhooks.md, "Targets and SSRF").

`check_target` resolves the host itself and judges the addresses, not the spelling: a literal
like 2130706433, 0177.0.0.1 or 0x7f.1 is whatever the resolver makes of it, and that address is
what is checked. The caller connects to one of `Target.addresses`, never resolving the name
again, so a second DNS answer (rebinding) is never used.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

_DEFAULT_PORTS = {"https": 443, "http": 80}
# Cloud metadata endpoints (AWS/GCP/Azure, AWS over IPv6, Alibaba): named so the reason says so.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
# Shared address space (RFC 6598, carrier-grade NAT): not "private" to Python, yet not public.
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# NAT64's well-known prefix (RFC 6052): the address is the IPv4 in its last 32 bits.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeTarget(ValueError):
    """A URL that outbound calls must not reach; `reason` says why, for the caller to show."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Target:
    """A checked URL: connect to one of `addresses` (each was checked), send `Host: host`."""

    url: str
    scheme: str
    host: str
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[IPAddress, ...]


def embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, NAT64), else the address itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def address_problem(address: IPAddress) -> str | None:
    """Why `address` is not a public one (None when it is)."""
    address = embedded_ipv4(address)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    checks = (
        ("loopback", address.is_loopback),
        ("unspecified", address.is_unspecified),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared (carrier-grade NAT)", address in _SHARED),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    )
    for name, hit in checks:
        if hit:
            return f"a {name} address"
    if not address.is_global:
        return "not a public address"
    return None


def check_target(
    url: str, *, allow_http: bool, allow_private: bool, resolve: Resolver = socket.getaddrinfo
) -> Target:
    """The target of `url` with every address its host resolves to, each checked; raises
    `UnsafeTarget(reason)` when any rule refuses it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeTarget(f"not a valid URL ({error})") from error
    scheme = parts.scheme.lower()
    if scheme != "https" and not (scheme == "http" and allow_http):
        allowed = "https:// or http://" if allow_http else "https://"
        raise UnsafeTarget(f"must be an {allowed} URL")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeTarget("must not carry a user name or password")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeTarget("has no host")
    port = _DEFAULT_PORTS[scheme] if port is None else port
    addresses = _resolve(host, port, resolve)
    if not allow_private:
        for address in addresses:
            if problem := address_problem(address):
                raise UnsafeTarget(f"resolves to {address}, {problem}")
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, addresses=addresses)


def _resolve(host: str, port: int, resolve: Resolver) -> tuple[IPAddress, ...]:
    """Every address `host` resolves to, in the resolver's order, without repeats."""
    try:
        answers = resolve(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as error:  # socket.gaierror; an IDNA label too long
        raise UnsafeTarget("does not resolve") from error
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        # A scoped IPv6 address comes back as "fe80::1%eth0": the scope is not the address.
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise UnsafeTarget("does not resolve")
    return tuple(found)
