"""A real nginx with the repository's gateway configuration (deploy/nginx/), on free ports, with
a throwaway certificate and a private prefix, pid and logs: never port 80, never /etc/nginx."""

from __future__ import annotations

import datetime
import functools
import http.client
import ipaddress
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.live import free_port
from tests.support.paths import ROOT

NGINX = Path("/usr/sbin/nginx")
TEMPLATE = ROOT / "deploy" / "nginx" / "postboard.conf.template"
needs_nginx = pytest.mark.skipif(
    not NGINX.exists(),
    reason="/usr/sbin/nginx is missing (.ci/run installs Debian's nginx): the gateway tests "
    "run a real one",
)
# The values docker-compose.yml's gateway service passes to the template, but for the wiring
# (ports, upstreams, certificate paths), which each test gives.
LIMITS = {
    "GATEWAY_MAX_BODY_BYTES": "1048576",
    "GATEWAY_RATE_PER_SECOND": "20",
    "GATEWAY_RATE_BURST": "40",
    "GATEWAY_CONNECTIONS_PER_IP": "50",
}
_NAME = re.compile(r"\$\{(GATEWAY_[A-Z0-9_]+)\}")


def template_variables() -> set[str]:
    return set(_NAME.findall(TEMPLATE.read_text()))


def render(values: Mapping[str, str]) -> str:
    """What the nginx image's envsubst makes of the template (only ${GATEWAY_*} names)."""
    missing = template_variables() - set(values)
    assert not missing, f"the template needs {sorted(missing)}"
    return _NAME.sub(lambda m: values[m.group(1)], TEMPLATE.read_text())


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (certificate, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "postboard-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "fullchain.pem", directory / "privkey.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)


@dataclass
class Gateway:
    http_port: int
    https_port: int
    cert: Path
    directory: Path

    def tls_context(self) -> ssl.SSLContext:
        """Trusts only the throwaway certificate, and checks it (hostname included)."""
        return ssl.create_default_context(cafile=str(self.cert))

    @functools.cached_property
    def _context(self) -> ssl.SSLContext:
        return self.tls_context()  # made once: timed calls measure the server, not the loading

    def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        source: str | None = None,
        timeout: float = 15,
    ) -> Answer:
        """One HTTPS request on a new connection, optionally from another loopback address."""
        connection = http.client.HTTPSConnection(
            "127.0.0.1",
            self.https_port,
            context=self._context,
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )
        try:
            connection.request(method, path, body=body, headers=dict(headers or {}))
            response = connection.getresponse()
            return Answer(response.status, response.headers, response.read())
        finally:
            connection.close()

    def access_log(self, uri: str) -> list[dict[str, Any]]:
        """nginx's access-log entries (JSON lines on its stdout) for this request URI."""
        lines = (self.directory / "nginx.out").read_text().splitlines()
        entries = [json.loads(line) for line in lines if line.startswith("{")]
        return [entry for entry in entries if entry["uri"] == uri]

    def logged(self, uri: str, number: int) -> dict[str, Any]:
        """The `number`th (from 0) entry for this URI, waiting for it: nginx logs a request
        just after it sent the answer."""
        deadline = time.monotonic() + 5
        while len(found := self.access_log(uri)) <= number:
            assert time.monotonic() < deadline, f"nginx logged no request {number} for {uri}"
            time.sleep(0.05)
        return found[number]

    def log(self) -> str:
        return (self.directory / "nginx.out").read_text() + (
            self.directory / "error.log"
        ).read_text()


def _main_config(directory: Path, site: Path) -> str:
    """The image's nginx.conf in miniature, every path private (the image's own: /etc/nginx)."""
    temp = {name: directory / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's 0700 tmp dirs.
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""
{user}
worker_processes 1;
daemon off;
pid {directory}/nginx.pid;
error_log {directory}/error.log info;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {site};
}}
"""


def _wait_for_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 10
    while True:
        if proc.poll() is not None:
            pytest.fail(f"nginx exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"nginx did not listen on {port}: {log.read_text()[-2000:]}")
            time.sleep(0.05)


@contextmanager
def running_gateway(
    directory: Path, *, web: str, flower: str, **overrides: str
) -> Iterator[Gateway]:
    """nginx with the repository's template in front of `web` and `flower` (host:port)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = make_certificate(directory)
    http_port, https_port = free_port(), free_port()
    values = {
        **LIMITS,
        "GATEWAY_HTTP_PORT": str(http_port),
        "GATEWAY_HTTPS_PORT": str(https_port),
        "GATEWAY_WEB_UPSTREAM": web,
        "GATEWAY_FLOWER_UPSTREAM": flower,
        "GATEWAY_TLS_CERT": str(cert),
        "GATEWAY_TLS_KEY": str(key),
        **overrides,
    }
    site = directory / "postboard.conf"
    site.write_text(render(values))
    main = directory / "nginx.conf"
    main.write_text(_main_config(directory, site))
    (directory / "error.log").touch()
    out = (directory / "nginx.out").open("w")
    proc = subprocess.Popen(
        [str(NGINX), "-p", str(directory), "-c", str(main), "-e", str(directory / "error.log")],
        stdout=out,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(https_port, proc, directory / "error.log")
        _wait_for_port(http_port, proc, directory / "error.log")
        yield Gateway(http_port, https_port, cert, directory)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # fast shutdown: drills leave connections open
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        out.close()
