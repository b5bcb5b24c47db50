"""One outbound POST (app/core/outbound.py) against real local servers: the answer read only up
to the cap, the connection made to the checked address only, and over TLS to that address while
the certificate is verified against the URL's host name."""

from __future__ import annotations

import socket
import ssl
from typing import Any

import pytest

from app.core import outbound
from tests.support.webhook_delivery import receiver


def test_outbound_reads_a_huge_answer_only_up_to_the_cap() -> None:
    with receiver() as server:
        big = b"x" * (8 * 1024 * 1024)
        server.expect_request("/big").respond_with_data(big, status=500)
        policy = outbound.Policy(
            timeout=5, max_response_bytes=1024, allow_http=True, allow_private=True
        )
        outcome = outbound.post(server.url_for("/big"), b"{}", {}, policy)
        assert outcome.status_code == 500
        assert outcome.error is not None
        assert len(outcome.error) <= outbound.ERROR_TEXT_MAX
        assert outcome.error.startswith("HTTP 500: xxxx")


def test_outbound_connects_to_the_checked_address_only() -> None:
    """A name resolving to an address where nothing listens is not retried elsewhere by the
    operating system's resolver: the one checked address refuses, and that is the answer."""
    with receiver() as server:
        server.expect_request("/in").respond_with_data("ok")
        listening = server.port

        def elsewhere(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port))]

        policy = outbound.Policy(
            timeout=2, max_response_bytes=1024, allow_http=True, allow_private=True
        )
        outcome = outbound.post(
            f"http://localhost:{listening}/in", b"{}", {}, policy, resolve=elsewhere
        )
        assert outcome.status_code is None
        assert outcome.error == "connection refused by 127.0.0.2"
        assert server.log == []


def self_signed(tmp_path: Any, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the server's context, a client context trusting only it) for a certificate of `name`."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


@pytest.mark.parametrize(("certified", "ok"), [("hooks.example.test", True), ("other.test", False)])
def test_https_connects_to_the_checked_address_and_verifies_the_host_name(
    tmp_path: Any, certified: str, ok: bool
) -> None:
    """The socket goes to the address the check resolved (127.0.0.1 here), while TLS checks
    the certificate against the URL's host name (SNI too) and Host: names it."""
    from pytest_httpserver import HTTPServer

    server_context, client_context = self_signed(tmp_path, certified)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=server_context)
    server.expect_request("/in").respond_with_data("ok")
    server.start()
    try:

        def pinned(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
            assert host == "hooks.example.test"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        policy = outbound.Policy(
            timeout=5, max_response_bytes=1024, allow_private=True, ssl_context=client_context
        )
        url = f"https://hooks.example.test:{server.port}/in"
        outcome = outbound.post(url, b"{}", {}, policy, resolve=pinned)
    finally:
        server.stop()
    if ok:
        assert (outcome.status_code, outcome.error) == (200, None)
        (request, _), *_ = server.log
        assert request.headers["Host"] == f"hooks.example.test:{server.port}"
    else:
        assert outcome.status_code is None
        assert outcome.error is not None
        assert outcome.error.startswith("TLS failed")
        assert server.log == []
