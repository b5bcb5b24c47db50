"""The cache entries' MACs (app/core/cache.py says why every entry carries one).

An entry is stored as its compact JSON with the MAC as its last member,
`{"v":3,"d":{...},"m":"<64 hex>"}`: the Lua scripts and the disk backend still read `v` from it,
and the MAC covers the entry's key and the exact bytes before `,"m"`, so a reader checks the
very bytes it then parses (no re-serialising) and an entry copied to another key fails.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from app.core.audit import security_event

MAC_LABEL = b"postboard/cache-entry-mac/v1"  # domain separation: this key signs nothing else
_MAC_OPEN = b',"m":"'
_MAC_TAIL = len(_MAC_OPEN) + 64 + 2  # ,"m":"<64 hex>"}


def mac_key(secret: str) -> bytes:
    """The entries' MAC key: derived from SECRET_KEY for this one use."""
    return hmac.new(secret.encode(), MAC_LABEL, hashlib.sha256).digest()


def _mac(key_bytes: bytes, key: str, body: bytes) -> bytes:
    named = f"{len(key)}:{key}".encode()  # the entry's own key: it cannot be moved to another
    return hmac.new(key_bytes, named + body, hashlib.sha256).hexdigest().encode()


def signed(key_bytes: bytes, key: str, entry: dict[str, Any]) -> bytes:
    """The stored bytes of `entry` under `key`: its JSON with the MAC as its last member."""
    body = json.dumps(entry, separators=(",", ":")).encode()
    return body[:-1] + _MAC_OPEN + _mac(key_bytes, key, body) + b'"}'


def verified(key_bytes: bytes, key: str, raw: bytes) -> dict[str, Any] | None:
    """The entry stored under `key` if its MAC is right, else None (and a security event)."""
    body = raw[:-_MAC_TAIL] + b"}"
    tail = raw[-_MAC_TAIL:]
    if (
        len(raw) > _MAC_TAIL
        and tail.startswith(_MAC_OPEN)
        and tail.endswith(b'"}')
        and hmac.compare_digest(tail[len(_MAC_OPEN) : -2], _mac(key_bytes, key, body))
    ):
        entry = json.loads(body)  # exactly the signed bytes: nothing unsigned is read
        if isinstance(entry, dict):
            return entry
    security_event("cache_entry_tampered", key=key)
    return None
