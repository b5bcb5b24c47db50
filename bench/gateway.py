"""Slow clients with and without the gateway (issue #19): the before/after figure of
docs/gateway.md. One command, the embedded default (a SQLite file in a temporary directory):

    .venv/bin/python -m bench.gateway [--slow 20] [--gets 5] [--get-timeout 40]

One gunicorn (2 sync workers, gunicorn.conf.py, GUNICORN_TIMEOUT 30 s) and, in front of it,
Debian's nginx with the repository's configuration (tests/support/gateway.py renders it). Each
variant, side by side in one run: `--slow` connections each send one header line every 2 s (a
slowloris), and meanwhile `--gets` GET /health, one a second, are timed (new connection each,
`--get-timeout` s at most). Reported: median and worst GET, how many got no answer, and the
worker timeouts gunicorn's arbiter logged (a worker killed because a slow client held it).
"""

from __future__ import annotations

import argparse
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.gateway import running_gateway
from tests.support.live import free_port
from tests.support.paths import ROOT


@contextmanager
def gunicorn(work: Path) -> Iterator[tuple[int, Path]]:
    port = free_port()
    env = {
        **os.environ,
        "APP_ENV": "testing",
        "INSTANCE_PATH": str(work),
        "DATABASE_URL": f"sqlite:///{work / 'bench.sqlite3'}",
        "PORT": str(port),
        "WEB_CONCURRENCY": "2",
        "TRUSTED_PROXY_COUNT": "1",
        "LOG_LEVEL": "WARNING",
    }
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND"):
        env.pop(name, None)
    bin_dir = Path(sys.executable).parent
    subprocess.run([bin_dir / "flask", "--app", "wsgi", "db", "upgrade"], cwd=ROOT, env=env,
                   check=True, capture_output=True)  # fmt: skip
    log = work / "gunicorn.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "wsgi:app", "-c", "gunicorn.conf.py"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
                    break
                except OSError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        sys.exit("gunicorn did not come up: " + log.read_text()[-2000:])
                    time.sleep(0.2)
            yield port, log
        finally:
            proc.terminate()
            proc.wait(timeout=40)


def slowloris(connect: Callable[[], socket.socket], stop: threading.Event) -> None:
    """One header line every 2 s until stopped or dropped."""
    try:
        sock = connect()
    except OSError:
        return
    with sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
            n = 0
            while not stop.wait(2):
                sock.sendall(f"X-Slow-{n}: aaaaaaaaaa\r\n".encode())
                n += 1
        except OSError:
            return  # dropped


def timed_gets(get: Callable[[], None], count: int, timeout: float) -> list[float | None]:
    """`count` GETs, one a second, concurrently; each its seconds or None (no answer)."""
    results: list[float | None] = [None] * count

    def one(i: int) -> None:
        started = time.perf_counter()
        try:
            get()
            results[i] = time.perf_counter() - started
        except OSError:
            results[i] = None

    threads = []
    for i in range(count):
        thread = threading.Thread(target=one, args=(i,), daemon=True)
        thread.start()
        threads.append(thread)
        time.sleep(1)
    for thread in threads:
        thread.join(timeout + 5)
    return results


def drill(
    connect: Callable[[], socket.socket], get: Callable[[], None], args: argparse.Namespace
) -> list[float | None]:
    stop = threading.Event()
    clients = [
        threading.Thread(target=slowloris, args=(connect, stop), daemon=True)
        for _ in range(args.slow)
    ]
    for thread in clients:
        thread.start()
    time.sleep(2.5)  # every slow client connected and mid-header
    try:
        return timed_gets(get, args.gets, args.get_timeout)
    finally:
        stop.set()
        for thread in clients:
            thread.join(timeout=5)


def summary(name: str, timings: list[float | None], timeouts: int, limit: float) -> str:
    answered = [t for t in timings if t is not None]
    missing = len(timings) - len(answered)
    median = f"{statistics.median(answered) * 1000:.1f} ms" if answered else "-"
    worst = f"> {limit:.0f} s (no answer)" if missing else f"{max(answered) * 1000:.1f} ms"
    return f"| {name} | {median} | {worst} | {missing}/{len(timings)} | {timeouts} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=20, help="slow clients")
    parser.add_argument("--gets", type=int, default=5, help="timed GET /health")
    parser.add_argument("--get-timeout", type=float, default=40.0)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        work = Path(tmp)
        with gunicorn(work) as (port, log):
            address = f"127.0.0.1:{port}"
            with running_gateway(work / "nginx", web=address, flower=address) as gateway:
                context = ssl.create_default_context(cafile=str(gateway.cert))

                def via_nginx() -> socket.socket:
                    raw = socket.create_connection(("127.0.0.1", gateway.https_port), timeout=60)
                    return context.wrap_socket(raw, server_hostname="localhost")

                def direct() -> socket.socket:
                    return socket.create_connection(("127.0.0.1", port), timeout=60)

                def get_via_nginx() -> None:
                    gateway.call("GET", "/health", timeout=args.get_timeout)

                def get_direct() -> None:
                    url = f"http://127.0.0.1:{port}/health"
                    urllib.request.urlopen(url, timeout=args.get_timeout).read()

                for name, connect, get in (
                    ("through nginx", via_nginx, get_via_nginx),
                    ("gunicorn directly", direct, get_direct),
                ):
                    print(f"{name}: {args.slow} slow clients, {args.gets} GETs ...", flush=True)
                    before = log.read_text().count("WORKER TIMEOUT")
                    timings = drill(connect, get, args)
                    time.sleep(1)
                    timeouts = log.read_text().count("WORKER TIMEOUT") - before
                    rows.append(summary(name, timings, timeouts, args.get_timeout))
                    print(rows[-1], flush=True)
                    # Let gunicorn recover (killed workers replaced) before the next variant.
                    time.sleep(3)
    print()
    print(f"{args.slow} slow clients (one header line every 2 s), GET /health once a second:")
    print("| | median GET | worst GET | unanswered | worker timeouts |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
