"""HTTP hardening: CORS, security headers, response compression, body-less OPTIONS.

- **CORS** (flask-cors) on `/api/...` only, for the exact origins in `CORS_ORIGINS` and nothing
  else: with the list empty (the default) no response carries `Access-Control-Allow-Origin`.
  Origins are matched literally (scheme, host and port, case-insensitively); `*`, `null`, paths
  and wildcards are refused at start-up. Bearer tokens, not cookies: no `Allow-Credentials`.
- **OPTIONS**: every OPTIONS that routing accepts (a CORS preflight or not) is `204 No Content`
  with `Allow` and no body and no Content-Type, instead of Flask's empty `text/html` 200; on an
  unknown path it is the usual 404 envelope. 204 and 304 responses never carry a Content-Type.
- **Security headers** on every response, errors included: `X-Content-Type-Options: nosniff`,
  `Referrer-Policy: no-referrer`, `X-Frame-Options: DENY`, a Content-Security-Policy
  (`default-src 'none'; frame-ancestors 'none'` for JSON; for the Swagger UI page, scripts and
  styles from our own origin plus the hash of each inline script the page holds, no
  'unsafe-inline'), `Strict-Transport-Security` in production only (`HSTS_SECONDS`), and
  `Cache-Control: no-store` on the responses of a blueprint declared `sensitive` (tokens: the
  auth blueprint declares it) and on any response that set no policy.
- **Compression** (flask-compress) of `application/json` bodies from `COMPRESS_MIN_SIZE` bytes
  (1 KiB) up, brotli or gzip as the client asks. flask-compress would append `:gzip` to strong
  ETags and evaluate conditionals itself; we keep our `"v<version>"` ETags byte for byte (the tag
  names the resource version, which If-Match / If-None-Match compare, whatever the coding) and
  leave conditional requests to the views. Sensitive responses (tokens) are never compressed.
  The coding is negotiated by werkzeug's Accept-Encoding parsing (q=0 honoured).

No hook is registered here: the request pipeline (app/core/pipeline.py) calls `bodyless`,
`cors`, `security_headers` and `compress` in the one finishing order it writes down.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, current_app, request
from flask_compress import Compress
from flask_cors import CORS

from app.settings import ConfigError

API_PATHS = re.compile(r"/api/.*")
SENSITIVE = "http_security.sensitive_blueprints"  # app.extensions key: their names
DOCS_ENDPOINT = "api-docs.openapi_swagger_ui"

CORS_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
CORS_ALLOW_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
]
CORS_EXPOSE_HEADERS = [
    "ETag",
    "Location",
    "Link",
    "X-Request-ID",
    "Retry-After",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
]
HSTS_DEFAULT = 31536000  # one year
CORS_MAX_AGE = 600  # seconds a browser may reuse a preflight answer (Chromium caps it at 7200)

JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
# Swagger UI: its JS and CSS from /api/docs/static/ ('self'), the spec and "Try it out" calls by
# fetch to our own origin, images only from itself or data: URIs (its CSS embeds SVG icons).
# The page's one inline script (the SwaggerUIBundle call in flask-smorest's template) is allowed
# by its sha256, computed from the page as served, so no 'unsafe-inline' is needed for scripts
# and nothing else inline can run.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'{hashes}; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)

COMPRESS_DEFAULTS = {
    "COMPRESS_MIMETYPES": ["application/json"],
    "COMPRESS_MIN_SIZE": 1024,
    "COMPRESS_ALGORITHM": ["br", "gzip"],
    "COMPRESS_LEVEL": 6,
    "COMPRESS_BR_LEVEL": 4,
}
_ORIGIN_RE = re.compile(r"https?://[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]{1,5})?", re.IGNORECASE)


def init_http_security(app: Flask) -> None:
    """Configure compression, security headers and CORS for `app` (the pipeline applies them)."""
    if int(app.config.get("HSTS_SECONDS", HSTS_DEFAULT)) < 0:
        raise ConfigError("HSTS_SECONDS must be >= 0")
    app.extensions.setdefault(SENSITIVE, set())
    _init_compression(app)
    _init_cors(app)
    app.extensions["http_security.static"] = _static_headers(app.config)


def sensitive(blueprint: Blueprint) -> Blueprint:
    """Declare a blueprint's responses sensitive (tokens): `Cache-Control: no-store` always,
    and never compressed (BREACH)."""
    blueprint.record_once(
        lambda state: state.app.extensions.setdefault(SENSITIVE, set()).add(blueprint.name)
    )
    return blueprint


def _is_sensitive() -> bool:
    return request.blueprint in current_app.extensions.get(SENSITIVE, ())


# --- CORS ---------------------------------------------------------------------------------------


def cors_origins(values: list[str] | str | None) -> list[str]:
    """The configured origins, normalised; anything but `scheme://host[:port]` is a ConfigError."""
    if isinstance(values, str):
        values = values.split(",")
    origins: list[str] = []
    for raw in values or []:
        origin = raw.strip()
        if not origin:
            continue
        if not _ORIGIN_RE.fullmatch(origin) or not 0 < _port(origin) < 65536:
            raise ConfigError(
                f"CORS_ORIGINS: {origin!r} is not an origin; list each one as "
                "scheme://host[:port] (no path, no trailing slash, no '*' or 'null')"
            )
        origins.append(origin.lower())  # scheme and host are case-insensitive
    return origins


def _port(origin: str) -> int:
    parts = urlsplit(origin)
    try:
        port = parts.port
    except ValueError:  # out of range
        return -1
    if port is None:
        return 443 if parts.scheme == "https" else 80
    return port


def _init_cors(app: Flask) -> None:
    origins = cors_origins(app.config.get("CORS_ORIGINS"))
    app.config["CORS_ORIGINS"] = origins
    if not origins:
        return  # nothing allowed: no Access-Control-* header on any response
    CORS(
        app,
        resources={API_PATHS: {}},
        # Validated above to hold no regex characters, so flask-cors compares each literally.
        origins=origins,
        methods=CORS_METHODS,
        allow_headers=CORS_ALLOW_HEADERS,
        expose_headers=CORS_EXPOSE_HEADERS,
        max_age=CORS_MAX_AGE,
        supports_credentials=False,
        send_wildcard=False,
        # Without an Origin header flask-cors would otherwise list every allowed origin.
        always_send=False,
        # The pipeline calls it on every response, errors included.
        intercept_exceptions=False,
        # Added by `cors` below, merged into one header, on every /api/ response (allowed or
        # not), so a shared cache never replays one origin's answer to another.
        vary_header=False,
    )
    # flask-cors offers its response step only as the after_request hook it registers: take it
    # back out, so it runs at its place in the pipeline's one finishing order.
    app.extensions["http_security.cors"] = app.after_request_funcs[None].pop()


def cors(response: Response) -> Response:
    """Vary: Origin on every /api/ response, and CORS headers for an allowed origin."""
    if API_PATHS.match(request.path):
        add_vary(response, "Origin")
    step = current_app.extensions.get("http_security.cors")
    return step(response) if step is not None else response


def add_vary(response: Response, *names: str) -> None:
    """Merge `names` into a single Vary header (flask-compress only reads the first one)."""
    present = [v.strip() for value in response.headers.getlist("Vary") for v in value.split(",")]
    present = [v for v in present if v]
    lowered = {v.lower() for v in present}
    present += [name for name in names if name.lower() not in lowered]
    response.headers["Vary"] = ", ".join(present)


# --- OPTIONS, 204 and 304 -----------------------------------------------------------------------


def bodyless(response: Response) -> Response:
    """Flask's automatic OPTIONS answer is an empty text/html 200: make it a 204 (with Allow).

    A 204 or 304 has no body, so it carries no Content-Type either.
    """
    if (
        request.method == "OPTIONS"
        and response.status_code == 200
        and request.routing_exception is None
        and not response.is_streamed
        and not response.get_data()
    ):
        response.status_code = 204
    if response.status_code in (204, 304):
        response.headers.pop("Content-Type", None)
        if response.status_code == 204:
            response.headers.pop("Content-Length", None)
    return response


# --- Security headers ---------------------------------------------------------------------------


def _static_headers(config: dict[str, Any]) -> list[tuple[str, str]]:
    headers = [
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        ("X-Frame-Options", "DENY"),
        ("Content-Security-Policy", JSON_CSP),
    ]
    if config["APP_ENV"] == "production":
        max_age = int(config.get("HSTS_SECONDS", HSTS_DEFAULT))
        headers.append(("Strict-Transport-Security", f"max-age={max_age}; includeSubDomains"))
    return headers


def security_headers(response: Response) -> Response:
    headers = response.headers
    own_csp = headers.get("Content-Security-Policy")  # an HTML page's own (GraphiQL's)
    for name, value in current_app.extensions["http_security.static"]:
        headers[name] = value
    if own_csp and response.mimetype == "text/html":
        headers["Content-Security-Policy"] = own_csp
    if request.endpoint == DOCS_ENDPOINT:
        headers["Content-Security-Policy"] = docs_csp(response)
    if "Cache-Control" not in headers or _is_sensitive():
        headers["Cache-Control"] = "no-store"  # tokens: never kept by any cache
    return response


def docs_csp(response: Response) -> str:
    """The docs page's CSP: scripts from 'self' and the sha256 of each inline script it holds."""
    hashes = ""
    if response.mimetype == "text/html" and not response.is_streamed:
        page = response.get_data(as_text=True)
        for script in _INLINE_SCRIPT.findall(page):
            digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
            hashes += f" 'sha256-{digest}'"
    return DOCS_CSP.format(hashes=hashes)


# --- Compression --------------------------------------------------------------------------------


def _init_compression(app: Flask) -> None:
    for key, value in COMPRESS_DEFAULTS.items():
        app.config.setdefault(key, value)
    app.config.update(
        COMPRESS_REGISTER=False,  # the pipeline calls it, to keep our ETags (below)
        COMPRESS_EVALUATE_CONDITIONAL_REQUEST=False,  # the views answer 304 / 412 themselves
        COMPRESS_STREAMS=False,
    )
    app.extensions["http_security.compress"] = Compress(app)


def compress(response: Response) -> Response:
    """Compress a JSON body for a client that accepts br or gzip, keeping our ETag."""
    if _is_sensitive():
        return response  # bodies holding tokens are never compressed (BREACH)
    compressor: Compress = current_app.extensions["http_security.compress"]
    etag = response.headers.get("ETag")
    # flask-compress reads Accept-Encoding itself but would pick a coding the client refused
    # with q=0 ("gzip;q=0"): it sees the one werkzeug's parser chose, or "identity".
    environ = request.environ
    sent = environ.get("HTTP_ACCEPT_ENCODING")
    chosen = request.accept_encodings.best_match(compressor.enabled_algorithms)
    environ["HTTP_ACCEPT_ENCODING"] = chosen or "identity"
    try:
        response = compressor.after_request(response)
    finally:
        if sent is None:
            environ.pop("HTTP_ACCEPT_ENCODING", None)
        else:
            environ["HTTP_ACCEPT_ENCODING"] = sent
    if etag is not None:  # flask-compress would make "v3" into "v3:gzip"
        response.headers["ETag"] = etag
    return response
