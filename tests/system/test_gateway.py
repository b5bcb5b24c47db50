"""The gateway for real (contract §10, issue #19): Debian's nginx with the repository's
configuration (deploy/nginx/postboard.conf.template) in front of a real gunicorn, on free
ports, with a throwaway certificate: TLS, the redirect, the body limit, nginx's own errors in
the JSON envelope, request ids, routing, client addresses, the edge's ceilings, slow clients.

Without nginx, the same slow clients hold gunicorn's workers: bench/gateway.py measures both."""

from __future__ import annotations

import json
import re
import socket
import ssl
import statistics
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
from flask import Flask

from tests.support.gateway import Gateway, needs_nginx, running_gateway
from tests.support.live import free_port, live_server

pytestmark = [needs_nginx, pytest.mark.xdist_group("gateway")]

LOGIN_LIMIT = 3  # per minute and client address (RATELIMIT_LOGIN), for the address tests
NGINX_ID = re.compile(r"^[0-9a-f]{32}$")  # nginx's $request_id


class FlowerStandIn(BaseHTTPRequestHandler):
    """Answers like Flower's basic auth (401 without credentials) and echoes what it got."""

    seen: ClassVar[list[dict[str, Any]]] = []

    def do_GET(self) -> None:
        FlowerStandIn.seen.append({"path": self.path, **dict(self.headers)})
        status = 200 if self.headers.get("Authorization") else 401
        body = json.dumps({"flower": self.path}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def flower() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FlowerStandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@pytest.fixture(scope="module")
def web(app: Flask, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """gunicorn (2 sync workers) trusting one proxy, as in docker-compose.yml."""
    directory = tmp_path_factory.mktemp("gateway-web")
    with live_server(
        app,
        directory,
        TRUSTED_PROXY_COUNT="1",
        RATELIMIT_ENABLED="true",
        RATELIMIT_LOGIN=f"{LOGIN_LIMIT}/minute",
    ) as (http, _):
        yield http.base.removeprefix("http://"), directory / "gunicorn.log"


@pytest.fixture(scope="module")
def gateway(
    web: tuple[str, Path], flower: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway"), web=web[0], flower=flower) as gw:
        yield gw


def assert_envelope(answer: Any, status: int, code: str) -> None:
    assert answer.status == status, answer.raw
    assert answer.headers["Content-Type"] == "application/json"
    assert set(answer.json) == {"error"}
    assert answer.json["error"]["code"] == code
    assert answer.json["error"]["message"]
    assert answer.headers["X-Request-ID"]


def test_tls_with_the_throwaway_certificate(gateway: Gateway) -> None:
    with (
        socket.create_connection(("127.0.0.1", gateway.https_port)) as raw,
        gateway.tls_context().wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    answer = gateway.call("GET", "/health")
    assert (answer.status, answer.json["status"]) == (200, "healthy")
    # Plain HTTP on the HTTPS port: nginx's 400, in the envelope.
    with socket.create_connection(("127.0.0.1", gateway.https_port), timeout=5) as raw:
        raw.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        head, _, body = raw.recv(4096).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "VALIDATION_ERROR"


def test_http_redirects_to_https(gateway: Gateway) -> None:
    import http.client

    for method, status in (("GET", 301), ("HEAD", 301), ("POST", 308), ("DELETE", 308)):
        connection = http.client.HTTPConnection("127.0.0.1", gateway.http_port, timeout=5)
        connection.request(method, "/api/posts?per_page=5", headers={"Host": "localhost"})
        response = connection.getresponse()
        response.read()
        connection.close()
        assert response.status == status, method
        assert response.headers["Location"] == (
            f"https://localhost:{gateway.https_port}/api/posts?per_page=5"
        )


def test_the_body_limit_is_a_json_413_at_the_edge_and_the_same_as_the_apps(
    gateway: Gateway, app: Flask
) -> None:
    limit = app.config["MAX_CONTENT_LENGTH"]
    headers = {"Content-Type": "application/json"}

    def body(size: int) -> bytes:
        prefix, suffix = b'{"email": "', b'"}'
        return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix

    answer = gateway.call("POST", "/api/users", body(limit + 1), headers)
    assert_envelope(answer, 413, "PAYLOAD_TOO_LARGE")
    # At the limit the app gets the body (and refuses its content, not its size).
    answer = gateway.call("POST", "/api/users", body(limit), headers)
    assert answer.status == 400, answer.raw
    assert answer.json["error"]["code"] == "VALIDATION_ERROR"
    assert answer.json["error"]["details"]


def test_a_stopped_upstream_is_a_json_502(tmp_path: Path) -> None:
    nothing = f"127.0.0.1:{free_port()}"  # no process listens there
    with running_gateway(tmp_path, web=nothing, flower=nothing) as gateway:
        for path in ("/api/posts", "/health", "/flower/"):
            answer = gateway.call("GET", path, headers={"X-Request-ID": "probe-502"})
            assert_envelope(answer, 502, "SERVICE_UNAVAILABLE")
            assert answer.headers["X-Request-ID"] == "probe-502"


def _logged_ids(log: str) -> set[str]:
    ids = set()
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                ids.add(json.loads(line).get("request_id"))
            except ValueError:
                continue  # a line still being written
    return ids


def test_request_ids_are_passed_through_or_made(gateway: Gateway, web: tuple[str, Path]) -> None:
    answer = gateway.call("GET", "/api/posts", headers={"X-Request-ID": "client.id-42_ok"})
    assert answer.status == 200
    assert answer.headers["X-Request-ID"] == "client.id-42_ok"
    made = []
    for headers in ({}, {"X-Request-ID": "not valid!"}, {"X-Request-ID": "x" * 129}):
        answer = gateway.call("GET", "/api/posts", headers=headers)
        assert answer.status == 200
        assert NGINX_ID.fullmatch(answer.headers["X-Request-ID"]), answer.headers
        made.append(answer.headers["X-Request-ID"])
    # The app logged under the gateway's id, and so did nginx: one id joins both logs.
    wanted = {"client.id-42_ok", *made}
    deadline = time.monotonic() + 5
    while not wanted <= _logged_ids(web[1].read_text()) & _logged_ids(gateway.log()):
        assert time.monotonic() < deadline, "an id is missing from the app's or nginx's log"
        time.sleep(0.05)


def test_routing(gateway: Gateway, web: tuple[str, Path]) -> None:
    def from_the_app(path: str, method: str = "GET", body: bytes | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body else {}
        earlier = len(gateway.access_log(path))
        answer = gateway.call(method, path, body, headers)
        assert gateway.logged(path, earlier)["upstream"] == web[0], (path, answer.raw)
        return answer

    assert from_the_app("/health").json["status"] == "healthy"
    assert from_the_app("/ready").status == 200
    assert from_the_app("/api/posts").json["data"] == []
    query = json.dumps({"query": "{ posts(first: 1) { edges { node { id } } } }"}).encode()
    assert from_the_app("/graphql", "POST", query).status == 200
    assert from_the_app("/graphql/schema.graphql").status == 200
    metadata = from_the_app("/.well-known/oauth-authorization-server").json
    assert metadata["issuer"].startswith("https://")  # the app saw X-Forwarded-Proto
    assert from_the_app("/oauth/authorize").status == 400  # the app's own error page
    # Everything else is nginx's JSON 404, whatever the extension; /metrics stays inside.
    for path in ("/metrics", "/", "/static/app.css", "/apix", "/health/x", "/_gateway_error"):
        earlier = len(gateway.access_log(path))
        assert_envelope(gateway.call("GET", path), 404, "NOT_FOUND")
        assert gateway.logged(path, earlier)["upstream"] == "", path


def test_nginxs_own_errors_are_in_the_envelope(gateway: Gateway) -> None:
    assert_envelope(gateway.call("GET", "/api/" + "a" * 9000), 414, "URI_TOO_LONG")
    assert_envelope(gateway.call("TRACE", "/api/posts"), 405, "METHOD_NOT_ALLOWED")
    too_big = {"X-Big": "b" * 9000}  # one header line over 8 KiB
    assert_envelope(gateway.call("GET", "/api/posts", headers=too_big), 400, "VALIDATION_ERROR")
    context = gateway.tls_context()
    with (
        socket.create_connection(("127.0.0.1", gateway.https_port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /api/posts HTTP/1.1\r\nHost: localhost\r\nno colon here\r\n\r\n")
        head, _, body = tls.recv(4096).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "VALIDATION_ERROR"
    # The app's own security headers on nginx's answers too.
    answer = gateway.call("GET", "/nowhere.html")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Retry-After" not in answer.headers  # only on the edge's 429


def test_flower_is_reached_under_its_prefix_with_its_own_auth(gateway: Gateway) -> None:
    FlowerStandIn.seen.clear()
    assert gateway.call("GET", "/flower/").status == 401
    answer = gateway.call("GET", "/flower/tasks?x=1", headers={"Authorization": "Basic b3BzOng="})
    assert (answer.status, answer.json) == (200, {"flower": "/flower/tasks?x=1"})
    seen = FlowerStandIn.seen[-1]
    assert seen["Authorization"] == "Basic b3BzOng="  # Flower checks it, not nginx
    assert seen["X-Forwarded-Proto"] == "https"
    assert gateway.call("GET", "/flower").headers["Location"].endswith("/flower/")


def _login(gateway: Gateway, source: str, spoofed: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if spoofed:
        headers["X-Forwarded-For"] = spoofed
    body = json.dumps({"email": f"nobody-{time.monotonic_ns()}@example.com", "password": "x" * 12})
    return gateway.call("POST", "/api/auth/login", body.encode(), headers, source=source)


def test_the_client_address_reaches_the_apps_per_ip_limit_and_cannot_be_spoofed(
    gateway: Gateway,
) -> None:
    # 127.0.0.2 tries LOGIN_LIMIT logins, each claiming another address: one window all the same.
    for n in range(LOGIN_LIMIT):
        assert _login(gateway, "127.0.0.2", spoofed=f"198.51.100.{n}").status == 401
    limited = _login(gateway, "127.0.0.2", spoofed="198.51.100.99")
    assert limited.status == 429, limited.raw
    assert limited.headers["X-RateLimit-Limit"] == str(LOGIN_LIMIT)  # the app's limit, not nginx's
    # Another client, through the same nginx: its own window (the app does not see nginx's address).
    assert _login(gateway, "127.0.0.3").status == 401


def test_the_edges_own_per_ip_ceiling_is_a_json_429(web: tuple[str, Path], tmp_path: Path) -> None:
    with running_gateway(
        tmp_path,
        web=web[0],
        flower=web[0],
        GATEWAY_RATE_PER_SECOND="1",
        GATEWAY_RATE_BURST="3",
    ) as gateway:
        answers = [gateway.call("GET", "/health", source="127.0.0.4") for _ in range(8)]
        statuses = [a.status for a in answers]
        assert statuses[:4] == [200] * 4, statuses  # the first one and a burst of three
        assert 429 in statuses[4:], statuses
        refused = next(a for a in answers if a.status == 429)
        assert_envelope(refused, 429, "RATE_LIMITED")
        assert refused.headers["Retry-After"] == "1"
        assert "X-RateLimit-Limit" not in refused.headers  # nginx's, the app never saw it
        # Per IP: another address still passes.
        assert gateway.call("GET", "/health", source="127.0.0.5").status == 200


def slow_client(port: int, context: ssl.SSLContext, stop: threading.Event, held: list) -> None:
    """One header line every 2 s (a slowloris), through TLS, until stopped or dropped."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        held.append(tls)
        n = 0
        while not stop.wait(2):
            try:
                tls.sendall(f"X-Slow-{n}: {'a' * 10}\r\n".encode())
            except OSError:
                return  # nginx dropped it (client_header_timeout)
            n += 1


@pytest.mark.serial
@pytest.mark.slow
def test_slow_clients_do_not_delay_others(gateway: Gateway) -> None:
    """20 slowloris connections through nginx while GET /health is timed: nginx holds them, the
    2 gunicorn workers never see them. Without nginx they hold the workers (bench/gateway.py)."""
    stop, held = threading.Event(), []
    clients = [
        threading.Thread(
            target=slow_client,
            args=(gateway.https_port, gateway.tls_context(), stop, held),
            daemon=True,
        )
        for _ in range(20)
    ]
    for thread in clients:
        thread.start()
    try:
        deadline = time.monotonic() + 10
        while len(held) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(held) == 20, "the slow clients did not all connect"
        connected = time.monotonic()
        time.sleep(2.5)  # every slow client is mid-header now
        # A server in service is busy and warm: a first call after an idle spell costs tens of
        # ms on this VM with or without slow clients (waking the processes), so warm up first.
        for _ in range(3):
            assert gateway.call("GET", "/health").status == 200
        timings = []
        for _ in range(12):
            started = time.perf_counter()
            answer = gateway.call("GET", "/health")
            timings.append(time.perf_counter() - started)
            assert answer.status == 200
            time.sleep(0.05)
        print(f"GET /health under 20 slow clients: {[round(t * 1000, 1) for t in timings]} ms")
        assert all(c.is_alive() for c in clients), "the slow clients were still sending"
        assert max(timings) < 0.1, timings
        # client_header_timeout (10 s) drops them: the next line they send after it fails.
        for thread in clients:
            thread.join(timeout=max(0.0, connected + 20 - time.monotonic()))
        assert not any(c.is_alive() for c in clients), "nginx never dropped the slow clients"
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=5)
    assert statistics.median(timings) < 0.1
