"""What production refuses to start with: weak or shared secrets, and webhook targets allowed
over http:// or on private addresses. `Settings` runs these when APP_ENV is production."""

from __future__ import annotations

import hmac
import itertools
from typing import TYPE_CHECKING

from app.settings.fields import ConfigError

if TYPE_CHECKING:
    from app.settings import Settings

MIN_SECRET_LENGTH = 32
_WEAK_SECRETS = {"changeme", "change-me", "secret"}
# Placeholder words: a secret containing one was copied from an example, not generated.
_PLACEHOLDERS = ("change-me", "changeme", "change_me")


def enforce_production_secrets(values: Settings) -> None:
    """Refuse to start production with an empty, placeholder, short or shared secret."""
    given = [("SECRET_KEY", values.secret_key), ("JWT_SECRET_KEY", values.jwt_secret_key)]
    if values.metrics_token:  # optional: unset, /metrics refuses every scrape in production
        given.append(("METRICS_TOKEN", values.metrics_token))
    for key, value in given:
        lowered = value.lower()
        if not value or lowered in _WEAK_SECRETS or any(p in lowered for p in _PLACEHOLDERS):
            raise ConfigError(f"{key} must be set to a real secret in production")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"{key} must be at least {MIN_SECRET_LENGTH} characters in production"
            )
    for (key, value), (other, other_value) in itertools.combinations(given, 2):
        if hmac.compare_digest(value.encode(), other_value.encode()):
            # One leaked value would then give both powers (e.g. a scraper could sign tokens).
            raise ConfigError(f"{key} and {other} must be different secrets in production")


def enforce_production_webhook_targets(values: Settings) -> None:
    """Refuse to start production with webhook targets allowed over http:// or on private
    addresses: either lets a subscriber aim our workers at the internal network (SSRF)."""
    for key, value in (
        ("WEBHOOKS_ALLOW_HTTP", values.webhooks_allow_http),
        ("WEBHOOKS_ALLOW_PRIVATE", values.webhooks_allow_private),
    ):
        if value:
            raise ConfigError(f"{key} must be false in production (development and tests only)")
