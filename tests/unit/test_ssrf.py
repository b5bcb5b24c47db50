"""The SSRF guard (app/core/ssrf.py): every address form a target may hide behind is refused,
judged by what the host resolves to; the Target carries exactly the addresses checked."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from app.core.ssrf import Target, UnsafeTarget, check_target

Answer = Sequence[tuple[Any, ...]]


def answering(*addresses: str) -> Callable[..., Answer]:
    """A stub resolver: every name resolves to `addresses`, in order."""

    def resolve(host: str, port: int, **_: Any) -> Answer:
        return [
            (
                socket.AF_INET6 if ":" in a else socket.AF_INET,
                socket.SOCK_STREAM,
                6,
                "",
                (a, port, 0, 0) if ":" in a else (a, port),
            )
            for a in addresses
        ]

    return resolve


def numeric_only(host: str, port: int, **kwargs: Any) -> Answer:
    """The system resolver, allowed no lookup: a literal is read as the C library reads it."""
    return socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST, **kwargs)


def check(url: str, resolve: Callable[..., Answer], **flags: bool) -> Target:
    options = {"allow_http": False, "allow_private": False, **flags}
    return check_target(url, resolve=resolve, **options)


REFUSED_ADDRESSES = [
    ("127.0.0.1", "loopback"),
    ("127.255.0.9", "loopback"),
    ("::1", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("192.168.1.1", "private"),
    ("fd12:3456::1", "private"),  # unique local
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
    ("::", "unspecified"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("100.64.0.1", "shared"),
    ("100.127.255.254", "shared"),
    ("169.254.169.254", "metadata"),
    ("fd00:ec2::254", "metadata"),
    ("100.100.100.200", "metadata"),
    ("192.0.2.10", "private"),  # TEST-NET-1 documentation range
    ("198.18.0.1", "private"),  # benchmarking
    ("2001:db8::1", "private"),  # IPv6 documentation
    # IPv4-mapped IPv6, in both spellings, and NAT64: judged by the IPv4 inside.
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:7f00:1", "loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "metadata"),
    ("64:ff9b::7f00:1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "metadata"),
    ("64:ff9b::10.0.0.1", "private"),
]


@pytest.mark.parametrize(("address", "kind"), REFUSED_ADDRESSES)
def test_a_name_resolving_to_a_non_public_address_is_refused(address: str, kind: str) -> None:
    with pytest.raises(UnsafeTarget, match=kind) as caught:
        check("https://hooks.example.com/in", answering(address))
    assert str(ipaddress.ip_address(address)) in caught.value.reason


@pytest.mark.parametrize(("address", "kind"), REFUSED_ADDRESSES)
def test_allow_private_lets_every_address_through(address: str, kind: str) -> None:
    target = check("https://hooks.example.com/in", answering(address), allow_private=True)
    assert target.addresses == (ipaddress.ip_address(address),)


@pytest.mark.parametrize(
    "literal",
    [
        "127.0.0.1",
        "2130706433",  # decimal
        "0177.0.0.1",  # octal
        "0x7f.1",  # hex, short form
        "0x7f000001",  # hex
        "127.1",  # short form
        "017700000001",  # octal, one number
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:7f00:1]",
    ],
)
def test_loopback_in_any_spelling_is_refused(literal: str) -> None:
    with pytest.raises(UnsafeTarget, match="loopback"):
        check(f"https://{literal}/hook", numeric_only)


@pytest.mark.parametrize(
    ("literal", "kind"),
    [("0xa9.0xfe.0xa9.0xfe", "metadata"), ("2852039166", "metadata"), ("012.0.0.1", "private")],
)
def test_other_spellings_are_judged_by_the_address_they_stand_for(literal: str, kind: str) -> None:
    with pytest.raises(UnsafeTarget, match=kind):
        check(f"https://{literal}/", numeric_only)


def test_a_public_target_carries_every_address_it_resolved_to() -> None:
    target = check(
        "https://hooks.example.com:8443/in/box?x=1", answering("93.184.216.34", "2606:2800::1")
    )
    assert target == Target(
        url="https://hooks.example.com:8443/in/box?x=1",
        scheme="https",
        host="hooks.example.com",
        port=8443,
        path="/in/box?x=1",
        addresses=(ipaddress.ip_address("93.184.216.34"), ipaddress.ip_address("2606:2800::1")),
    )


def test_the_path_is_at_least_a_slash_and_the_port_defaults_by_scheme() -> None:
    public = answering("93.184.216.34")
    assert (
        check("https://example.com", public).path,
        check("https://example.com", public).port,
    ) == (
        "/",
        443,
    )
    plain = check("http://example.com", public, allow_http=True)
    assert (plain.scheme, plain.port) == ("http", 80)


def test_one_private_address_among_public_ones_refuses_the_target() -> None:
    with pytest.raises(UnsafeTarget, match=r"10\.0\.0\.7"):
        check("https://example.com/", answering("93.184.216.34", "10.0.0.7"))


def test_each_check_resolves_once_and_keeps_only_what_it_checked() -> None:
    """DNS rebinding: public on the first answer, private on the second. The check that saw the
    public answer returns it (and only it); the next check sees the private one and refuses."""
    calls: list[str] = []
    answers = iter([answering("93.184.216.34"), answering("127.0.0.1")])

    def rebinding(host: str, port: int, **kwargs: Any) -> Answer:
        calls.append(host)
        return next(answers)(host, port, **kwargs)

    target = check("https://rebind.example.com/", rebinding)
    assert calls == ["rebind.example.com"]
    assert target.addresses == (ipaddress.ip_address("93.184.216.34"),)
    with pytest.raises(UnsafeTarget, match="loopback"):
        check("https://rebind.example.com/", rebinding)
    assert calls == ["rebind.example.com"] * 2


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://example.com/", "https://"),
        ("ftp://example.com/", "https://"),
        ("file:///etc/passwd", "https://"),
        ("gopher://example.com/", "https://"),
        ("javascript:alert(1)", "https://"),
        ("example.com/hook", "https://"),
        ("", "https://"),
        ("https://user:pass@example.com/", "user name or password"),
        ("https://user@example.com/", "user name or password"),
        ("https://@example.com/", "user name or password"),
        ("https:///path-only", "no host"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://[::1/", "not a valid URL"),
    ],
)
def test_malformed_or_unsafe_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeTarget, match=reason):
        check(url, answering("93.184.216.34"))


def test_http_needs_its_flag_and_ftp_never_passes() -> None:
    public = answering("93.184.216.34")
    assert check("http://example.com/", public, allow_http=True).scheme == "http"
    with pytest.raises(UnsafeTarget, match=r"https:// or http://"):
        check("ftp://example.com/", public, allow_http=True)


def test_a_name_that_does_not_resolve_is_refused() -> None:
    def nothing(host: str, port: int, **_: Any) -> Answer:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UnsafeTarget, match="does not resolve"):
        check("https://no-such-host.invalid/", nothing)
    with pytest.raises(UnsafeTarget, match="does not resolve"):
        check("https://empty.example.com/", answering())
    # Even where private targets are allowed: nothing to connect to.
    with pytest.raises(UnsafeTarget, match="does not resolve"):
        check("https://no-such-host.invalid/", nothing, allow_private=True)
