"""What the idempotency table keeps of a request and its response, protected at rest.

A keyed request's body may carry a password (registration) and its response an email, so a
database dump must reveal neither:

- **Fingerprints are keyed**: HMAC-SHA256 under a key derived from SECRET_KEY (HKDF, its own
  `info`, so it is independent of every other use of SECRET_KEY). An unkeyed hash of a known
  body shape could be brute-forced for the password at billions of guesses a second; without
  the server secret there is nothing to test guesses against.
- **Responses are sealed**: headers and body encrypted and authenticated with Fernet under a
  second derived key, as the cache seals emails.

A fingerprint reads `h1:<key id>:<mac>`. The key id (a MAC of a constant) tells rows written
under this SECRET_KEY from rows written under another one, or by the code before this format
(a bare SHA-256 hex digest); the store treats such foreign rows as absent.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

VERSION = "h1"
_FINGERPRINT_INFO = b"postboard/idempotency/fingerprint/v1"
_SEAL_INFO = b"postboard/idempotency/response-seal/v1"


class InvalidSeal(Exception):
    """A stored response that this key did not seal (or that was altered)."""


def _derive(secret: str, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(secret.encode())


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class IdempotencySeal:
    """Keyed fingerprints and sealed responses under one SECRET_KEY."""

    def __init__(self, secret: str) -> None:
        self._mac_key = _derive(secret, _FINGERPRINT_INFO)
        self._box = Fernet(base64.urlsafe_b64encode(_derive(secret, _SEAL_INFO)))
        key_id = _b64(hmac.new(self._mac_key, b"key-id", hashlib.sha256).digest())[:8]
        self.prefix = f"{VERSION}:{key_id}:"

    def fingerprint(self, parts: Iterable[bytes]) -> str:
        """`h1:<key id>:<HMAC of the length-prefixed parts>` (55 characters)."""
        mac = hmac.new(self._mac_key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(len(part).to_bytes(8, "big"))
            mac.update(part)
        return self.prefix + _b64(mac.digest())

    def owns(self, fingerprint: str) -> bool:
        """Whether a stored fingerprint was made under this key in this format."""
        return fingerprint.startswith(self.prefix)

    def seal(self, headers: dict[str, str], body: bytes) -> bytes:
        payload = {"headers": headers, "body": base64.b64encode(body).decode()}
        return self._box.encrypt(json.dumps(payload, separators=(",", ":")).encode())

    def unseal(self, sealed: bytes) -> tuple[dict[str, str], bytes]:
        try:
            payload = json.loads(self._box.decrypt(bytes(sealed)))
            return dict(payload["headers"]), base64.b64decode(payload["body"], validate=True)
        except (InvalidToken, ValueError, KeyError, TypeError, binascii.Error) as error:
            raise InvalidSeal from error


@lru_cache(maxsize=8)
def seal_for(secret: str) -> IdempotencySeal:
    """The seal of this SECRET_KEY (derived once per process)."""
    return IdempotencySeal(secret)
