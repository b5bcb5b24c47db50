"""Redaction: what makes a value safe to log. Values under secret-looking keys (password, token,
authorization, secret, cookie, ...; nested too) become "[REDACTED]"; JWTs, `Bearer ...`
credentials and `password=...`-style pairs are masked inside any string.

Both log formats use it: the JSON lines of the web and worker (app/core/logging.py) and the
CLI's plain text (app/core/cli_logging.py). No third-party import: a CLI call stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"

# Keys whose values are never written (compared lower-cased, with "-" read as "_").
SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "current_password",
        "new_password",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "authorization",
        "proxy_authorization",
        "secret",
        "client_secret",
        "secret_key",
        "jwt",
        "jwt_secret_key",
        "api_key",
        "apikey",
        "x_api_key",
        "cookie",
        "set_cookie",
        "private_key",
    }
)
SECRET_KEY_SUFFIXES = ("password", "_token", "_secret", "secret_key", "api_key", "_jwt")

_SECRET_WORDS = "password|passwd|token|secret|secret_key|api[_-]?key|authorization|cookie|jwt"  # noqa: S105  # nosec B105 # names, not a secret
# Masked inside any string (message, exception text, an extra's value):
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT (or anything shaped like one): base64url JSON `{"...` then up to two more segments.
    (re.compile(r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"), REDACTED),
    # An Authorization header value: `Bearer xyz`, `Basic xyz`.
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[^\s\"',;]+"), r"\1\2" + REDACTED),
    # `password=...` in a query string, `"token": "..."` / `'token': '...'` in a repr or JSON.
    (
        re.compile(
            r"(?i)\b([A-Za-z0-9_-]*(?:" + _SECRET_WORDS + r"))"
            r"([\"']?\s*[=:]\s*[\"']?)(?!\[REDACTED\]|(?:bearer|basic)\s)([^\s\"'&,;}\]]+)"
        ),
        r"\1\2" + REDACTED,
    ),
)
# What any pattern above needs to match (no match here: the first one changes nothing, so neither
# do the others). Searched in non-ASCII text only, where case-insensitive matching folds more
# than `str.lower` does (the long s is s, the Kelvin sign is k); ASCII text takes substring tests.
_MAYBE_SECRET = re.compile(r"(?i)eyJ|(?:bearer|basic)\s|(?:" + _SECRET_WORDS + r")[\"']?\s*[=:]")


def is_secret_key(key: object) -> bool:
    """True for a key whose value must never be logged."""
    if not isinstance(key, str):
        return False
    name = key.lower().replace("-", "_")
    return name in SECRET_KEYS or name.endswith(SECRET_KEY_SUFFIXES)


def _may_hold_secret(text: str) -> bool:
    """False only if no masking pattern can match `text` (a few substring tests if ASCII)."""
    if not text.isascii():
        return _MAYBE_SECRET.search(text) is not None
    if "eyJ" in text:
        return True
    low = text.lower()
    if "bearer" in low or "basic" in low:
        return True
    # The third pattern: one of _SECRET_WORDS ("api[_-]?key" has "key"), then `=` or `:`.
    return ("=" in text or ":" in text) and (
        "passw" in low
        or "token" in low
        or "secret" in low
        or "key" in low
        or "authorization" in low
        or "cookie" in low
        or "jwt" in low
    )


def mask_text(text: str) -> str:
    """`text` with JWTs, Authorization credentials and `secret=value` pairs masked."""
    if not _may_hold_secret(text):
        # re.sub would return a plain str even for a str subclass: so does this.
        return text if type(text) is str else str.__str__(text)
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


_secret_names: dict[str, bool] = {}  # is_secret_key of the (few) key names seen, memoised


def _is_secret_name(key: object) -> bool:
    if type(key) is not str:
        return is_secret_key(key)
    secret = _secret_names.get(key)
    if secret is None:
        secret = is_secret_key(key)
        if len(_secret_names) < 4096:  # bounded: keys built from data must not grow it forever
            _secret_names[key] = secret
    return secret


def redact(value: Any) -> Any:
    """A copy of `value` safe to log: secret keys blanked and secret-looking text masked."""
    kind = type(value)
    if kind is str:
        return mask_text(value)
    if value is None or kind is int or kind is float or kind is bool:
        return value
    if isinstance(value, str):
        return mask_text(value)
    if isinstance(value, bool | int | float):
        return value
    if isinstance(value, Mapping):
        return _redact_mapping(value)
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(item) for item in value]
    # Anything else is rendered as text, so mask the text it renders as.
    return mask_text(str(value))


def _redact_mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    """`redact` of a mapping: str keys, secret ones blanked (common values inlined, for speed)."""
    safe: dict[str, Any] = {}
    for key, item in value.items():
        name = key if type(key) is str else str(key)
        if _is_secret_name(key):
            safe[name] = REDACTED
            continue
        kind = type(item)
        if kind is str:
            safe[name] = mask_text(item)
        elif item is None or kind is int or kind is float or kind is bool:
            safe[name] = item
        else:
            safe[name] = redact(item)
    return safe
