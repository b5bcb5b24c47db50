"""The drill's receivers (bench/webhooks.py): local HTTP targets, each verifying what it gets
with `standardwebhooks` and answering as told (at once, after 9 s, 500, or not listening), run in
a process of their own, and the check of what each received."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook as Verifier

SLOW_SECONDS = 9.0
USERS, POSTS = 50, 10  # a round: every post edited once, 500 events; 4 rounds: 2,000
SLOW, REFUSING, FAILING = 5, 3, 2  # targets: the rest are healthy


class Target:
    """One local receiver: records what it got (verified), answers as told."""

    def __init__(self, index: int, behaviour: str) -> None:
        self.index = index
        self.behaviour = behaviour  # healthy | slow | failing | refusing
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.bad_signatures = 0
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.port = 0
        if behaviour == "refusing":
            self.port = free_port()  # nothing listens there
            return
        target = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                target.take(body, {k.lower(): v for k, v in self.headers.items()})
                if target.behaviour == "slow":
                    time.sleep(SLOW_SECONDS)
                status = 500 if target.behaviour == "failing" else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook/{self.index}"

    def take(self, body: bytes, headers: dict[str, str]) -> None:
        try:
            payload = Verifier(self.secret).verify(body, headers)
        except Exception:
            with self.lock:
                self.bad_signatures += 1
            return
        data = payload["data"]
        with self.lock:
            self.received.append(
                {
                    "at": time.monotonic(),
                    "id": data["id"],
                    "aggregate": data["aggregate"]["id"],
                    "version": data["version"],
                }
            )

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def serve_targets(kinds: list[str], pipe: Any) -> None:
    """The receivers' own process (as remote receivers would be, they do not share the bench's
    client process and its GIL): every target, and a control endpoint for the bench."""
    # They stand in for remote machines: their CPU is not the service's, so they yield it.
    os.nice(19)
    targets = {n: Target(n, kind) for n, kind in enumerate(kinds)}

    class Control(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name: the secrets
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            for index, secret in body.items():
                targets[int(index)].secret = secret
            self.answer({})

        def do_GET(self) -> None:  # what each target received
            found = {}
            for index, target in targets.items():
                with target.lock:
                    found[index] = {"received": list(target.received), "bad": target.bad_signatures}
            self.answer(found)

        def answer(self, value: Any) -> None:
            data = json.dumps(value).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    control = ThreadingHTTPServer(("127.0.0.1", 0), Control)
    pipe.send(
        {"control": control.server_address[1], "urls": {n: t.url for n, t in targets.items()}}
    )
    control.serve_forever()


class Receivers:
    """The bench's handle on the receivers' process."""

    def __init__(self, kinds: list[str]) -> None:
        import multiprocessing

        self.kinds = kinds
        parent, child = multiprocessing.Pipe()
        self.proc = multiprocessing.get_context("fork").Process(
            target=serve_targets, args=(kinds, child), daemon=True
        )
        self.proc.start()
        told = parent.recv()
        self.control = told["control"]
        self.urls = {int(n): url for n, url in told["urls"].items()}

    def set_secrets(self, secrets: dict[int, str]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=30)
        conn.request("POST", "/", body=json.dumps(secrets))
        conn.getresponse().read()
        conn.close()

    def records(self) -> dict[int, dict[str, Any]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.control, timeout=60)
        conn.request("GET", "/")
        found = json.loads(conn.getresponse().read())
        conn.close()
        return {int(n): value for n, value in found.items()}

    def close(self) -> None:
        self.proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def check_target(got: list[dict[str, Any]], expected: dict[str, list[int]]) -> dict[str, Any]:
    """Got every event of its user once, each aggregate's versions in increasing order."""
    ids = Counter(item["id"] for item in got)
    per_aggregate: dict[str, list[int]] = {}
    for item in got:
        per_aggregate.setdefault(item["aggregate"], []).append(item["version"])
    in_order = all(versions == sorted(versions) for versions in per_aggregate.values())
    complete = {a: sorted(set(v)) for a, v in per_aggregate.items()} == expected
    return {
        "received": len(got),
        "distinct": len(ids),
        "duplicates": sum(n - 1 for n in ids.values()),
        "in_order": in_order,
        "complete": complete,
        "last_at": max((item["at"] for item in got), default=None),
    }
