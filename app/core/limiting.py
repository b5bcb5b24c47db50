"""Rate limits (flask-limiter): per user when authenticated, per client IP otherwise.

One window per caller for the whole API (not per route). Sliding windows (the
`sliding-window-counter` strategy by default: O(1) per caller, where `moving-window` keeps and
scans one entry per request up to the limit), shared by every web process through
Redis when REDIS_URL is set, in process memory on the embedded default. Registration and login
have their own, stricter, per-IP limits. If Redis fails mid-flight, limiting falls back to
per-process memory (so a limit may then admit up to limit x processes) and no request fails.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Flask, Response, current_app, g, request
from flask_jwt_extended import decode_token
from flask_limiter import Limit, Limiter, RequestLimit

from app.core.audit import security_event
from app.core.fast_reads import CHARGED
from app.core.redis_client import limiter_storage_options

# Probes, metrics and docs are never limited: an orchestrator must always reach them.
EXEMPT_BLUEPRINTS = {"ops", "api-docs"}
EXEMPT_ENDPOINTS = {"swagger_ui_static", "metrics"}


def token_subject() -> str | None:
    """The `sub` of a validly signed, unexpired bearer token, else None (then keyed per IP).

    Only the signature and expiry are checked here (no database): the view's own @authenticated
    does the full check. A forged or expired token is simply treated as anonymous.
    """
    if "rl_subject" in g:
        return g.rl_subject
    subject = None
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer " and len(header) < 8192:
        try:
            subject = str(decode_token(header[7:].strip())["sub"])
        except Exception:  # any invalid token: anonymous for limiting, 401 in the view
            subject = None
    g.rl_subject = subject
    return subject


def client_ip() -> str:
    """The client address; ProxyFix has already applied X-Forwarded-For when (and only when)
    TRUSTED_PROXY_COUNT says how many proxies to trust."""
    return request.remote_addr or "unknown"


def client_key() -> str:
    subject = token_subject()
    return f"user:{subject}" if subject else f"ip:{client_ip()}"


def ip_key() -> str:
    return f"ip:{client_ip()}"


def default_limit() -> str:
    cfg = current_app.config
    return cfg["RATELIMIT_AUTHENTICATED"] if token_subject() else cfg["RATELIMIT_ANONYMOUS"]


def login_limit() -> str:
    return str(current_app.config["RATELIMIT_LOGIN"])


def register_limit() -> str:
    return str(current_app.config["RATELIMIT_REGISTER"])


def _exempt() -> bool:
    return (
        request.blueprint in EXEMPT_BLUEPRINTS
        or request.endpoint in EXEMPT_ENDPOINTS
        or CHARGED in request.environ  # the fast lane took this request's hit already
    )


def _charged_headers(response: Response) -> Response:
    """The X-RateLimit-* headers of a hit the fast lane took (app/core/fast_reads.py) before it
    handed the request over; flask-limiter adds them for every other limited request."""
    charged = request.environ.get(CHARGED)
    if charged is not None:
        for name, value in charged.headers():
            response.headers[name] = value
    return response


def _on_breach(limit: RequestLimit) -> None:
    security_event(
        "rate_limited",
        key=limit.key.split("/")[-1] if limit.key else None,
        limit=str(limit.limit),
        path=request.path,
        method=request.method,
    )


# Route limits beyond the default, by endpoint: (limit, key, methods). Applied per app.
ROUTE_LIMITS = {
    "auth.Login": (login_limit, ip_key, ["POST"]),
    "users.UserCollection": (register_limit, ip_key, ["POST"]),
}


def configure_limiter(app: Flask) -> Limiter:
    """A Limiter of this app's own (flask-limiter keeps its storage and switches on the
    instance, so apps built side by side, as in tests, must not share one)."""
    cfg: dict[str, Any] = app.config
    cfg.setdefault("RATELIMIT_STORAGE_URI", cfg.get("REDIS_URL") or "memory://")
    cfg.setdefault("RATELIMIT_HEADERS_ENABLED", True)
    cfg.setdefault("RATELIMIT_KEY_PREFIX", "postboard")
    cfg.setdefault("RATELIMIT_SWALLOW_ERRORS", True)
    cfg.setdefault("RATELIMIT_IN_MEMORY_FALLBACK_ENABLED", True)
    if cfg["RATELIMIT_STORAGE_URI"].startswith("redis"):
        # A dead Redis must cost milliseconds, not the default socket timeouts.
        cfg.setdefault("RATELIMIT_STORAGE_OPTIONS", limiter_storage_options(cfg))
    limiter = Limiter(
        key_func=client_key,
        # One budget per caller across the whole API (a shared scope), not one per route:
        # RATELIMIT_AUTHENTICATED=100/minute means 100 requests a minute in all. (Not an
        # `application_limits` entry: flask-limiter 4.1 then drops the X-RateLimit-* headers on
        # routes that also carry a route limit, such as GET /api/users.)
        default_limits=[Limit(default_limit, scope="api", shared=True, exempt_when=_exempt)],
        on_breach=_on_breach,
    )
    limiter.init_app(app)
    app.after_request(_charged_headers)
    for endpoint, (limit, key, methods) in ROUTE_LIMITS.items():
        limited = limiter.limit(limit, key_func=key, methods=methods)
        app.view_functions[endpoint] = cast(Any, limited(app.view_functions[endpoint]))
    app.extensions["limiter"] = limiter
    return limiter
