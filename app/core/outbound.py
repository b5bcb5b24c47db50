"""One outbound POST to a URL a subscriber gave us, safe against what that URL may do.

- The URL is checked again at the call (app/core/ssrf.py `check_target`: scheme, every resolved
  address public), and the connection goes to an address that check returned, never to a second
  DNS answer: the socket connects to the IP, TLS still verifies the certificate against the host
  name (SNI and hostname check on `host`), and `Host:` names the host.
- No redirect is followed (a 3xx is a failure), nothing is retried here (the caller's backoff
  decides), the whole call has one deadline (connect, send, headers and body together: a
  watchdog closes the socket when it passes), and at most `max_response_bytes` of the answer are
  read, undecoded, before the connection is closed.

It never raises for anything the target does: the result says what happened.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import (
    ConnectTimeoutError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util.ssl_match_hostname import CertificateError

from app.core.ssrf import Resolver, Target, UnsafeTarget, check_target

ERROR_TEXT_MAX = 500  # characters of an error (and of the answer's body quoted in it)
BODY_QUOTE_MAX = 200
_CHUNK = 16384


@dataclass(frozen=True)
class Outcome:
    """What one POST did: the status (None when no answer came), its time, and why it failed."""

    status_code: int | None
    duration_ms: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class Policy:
    """The rules of one call (from the WEBHOOKS_* settings)."""

    timeout: float
    max_response_bytes: int
    allow_http: bool = False
    allow_private: bool = False
    # Tests trust their own certificate authority; None = the system's.
    ssl_context: ssl.SSLContext | None = None


def post(
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: Policy,
    *,
    resolve: Resolver = socket.getaddrinfo,
) -> Outcome:
    """POST `body` to `url` under `policy`; never raises for what the target does."""
    started = time.monotonic()
    try:
        target = check_target(
            url,
            allow_http=policy.allow_http,
            allow_private=policy.allow_private,
            resolve=resolve,
        )
    except UnsafeTarget as refused:
        return Outcome(None, _ms_since(started), _clip(f"refused: {refused.reason}"))
    deadline = started + policy.timeout
    error = "no address to connect to"
    for address in target.addresses:  # every one was checked; the next only if one refuses
        if time.monotonic() >= deadline:
            break
        outcome = _post_to(target, str(address), body, headers, policy, deadline, started)
        if outcome is not None:
            return outcome
        error = f"connection refused by {address}"
    if time.monotonic() >= deadline:
        error = f"timed out after {policy.timeout:g} s"
    return Outcome(None, _ms_since(started), error)


def _post_to(
    target: Target,
    address: str,
    body: bytes,
    headers: Mapping[str, str],
    policy: Policy,
    deadline: float,
    started: float,
) -> Outcome | None:
    """One connection to `address`; None when it could not connect (try the next address)."""
    conn = _connection(target, address, policy, max(0.001, deadline - time.monotonic()))
    watchdog = threading.Timer(max(0.0, deadline - time.monotonic()), _abort, args=(conn,))
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": _host_header(target), "Connection": "close"},
            preload_content=False,
            decode_content=False,
        )
        response = conn.getresponse()
        status = int(response.status)
        head = _read_capped(response, policy.max_response_bytes, deadline)
    except (NewConnectionError, ConnectionRefusedError) as exc:
        if time.monotonic() >= deadline:
            return Outcome(None, _ms_since(started), f"timed out after {policy.timeout:g} s")
        return None if _refused(exc) else Outcome(None, _ms_since(started), _describe(exc))
    except (ConnectTimeoutError, ReadTimeoutError, TimeoutError):
        return Outcome(None, _ms_since(started), f"timed out after {policy.timeout:g} s")
    except (SSLError, ssl.SSLError, CertificateError) as exc:
        return Outcome(None, _ms_since(started), _clip(f"TLS failed: {exc}"))
    except (ProtocolError, OSError, ValueError) as exc:
        if time.monotonic() >= deadline:
            return Outcome(None, _ms_since(started), f"timed out after {policy.timeout:g} s")
        return Outcome(None, _ms_since(started), _describe(exc))
    finally:
        watchdog.cancel()
        conn.close()
    duration = _ms_since(started)
    if 200 <= status < 300:
        return Outcome(status, duration)
    if 300 <= status < 400:
        location = response.headers.get("Location", "")
        return Outcome(status, duration, _clip(f"redirect not followed (HTTP {status} {location})"))
    quoted = _printable(head[:BODY_QUOTE_MAX].decode("utf-8", "replace"))
    return Outcome(status, duration, _clip(f"HTTP {status}" + (f": {quoted}" if quoted else "")))


def _connection(target: Target, address: str, policy: Policy, timeout: float) -> HTTPConnection:
    if target.scheme == "https":
        context = policy.ssl_context or ssl.create_default_context()
        return HTTPSConnection(
            address,
            target.port,
            timeout=timeout,
            server_hostname=target.host,  # SNI and the certificate's name: the host, not the IP
            assert_hostname=target.host,
            ssl_context=context,
            cert_reqs="CERT_REQUIRED",
        )
    return HTTPConnection(address, target.port, timeout=timeout)


def _read_capped(response: Any, cap: int, deadline: float) -> bytes:
    """At most `cap` bytes of the body (never decoded: no decompression bomb), then stop."""
    kept = bytearray()
    while len(kept) < cap and time.monotonic() < deadline:
        chunk = response.read1(min(_CHUNK, cap - len(kept)), decode_content=False)
        if not chunk:
            break
        kept += chunk
    return bytes(kept)


def _abort(conn: HTTPConnection) -> None:
    """The deadline passed: end the connection, which fails whatever read or write is under way."""
    sock = getattr(conn, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.shutdown(socket.SHUT_RDWR)


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def _refused(exc: BaseException) -> bool:
    """A connection the address refused or could not route (another address may answer)."""
    return isinstance(exc, ConnectionRefusedError) or "refused" in str(exc).lower()


def _describe(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, NewConnectionError) or "refused" in text.lower():
        return _clip(f"connection failed: {text.split(':')[-1].strip() or type(exc).__name__}")
    return _clip(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else " " for ch in text).strip()


def _clip(text: str) -> str:
    return text if len(text) <= ERROR_TEXT_MAX else text[: ERROR_TEXT_MAX - 1] + "…"


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)
