"""The shared token blocklist: Redis answers, the database is the durable record."""

from __future__ import annotations

import redis

from app.auth.blocklist import FAMILY_PREFIX, KEY_PREFIX
from tests.support.backends import REDIS_URL, needs_redis


def _redis() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@needs_redis
def test_resync_restores_revocations_redis_lost(app, client, account) -> None:
    assert client.post("/api/auth/logout", headers=account.headers).status_code == 204
    r = _redis()
    keys = list(r.scan_iter(KEY_PREFIX + "*"))
    assert len(keys) == 2  # the access token and its login's token family
    r.delete(*keys)  # Redis restarted without persistence, or missed the mirror
    assert client.get("/api/me", headers=account.headers).status_code == 200

    from worker.tasks.maintenance import resync_blocklist

    with app.app_context():
        assert resync_blocklist.run() == 2  # the body, in this test app's context
    assert client.get("/api/me", headers=account.headers).status_code == 401
    for key in keys:
        lifetime = (
            "JWT_REFRESH_TOKEN_EXPIRES"
            if key.decode().startswith(KEY_PREFIX + FAMILY_PREFIX)
            else "JWT_ACCESS_TOKEN_EXPIRES"
        )
        assert 0 < r.ttl(key) <= app.config[lifetime].total_seconds() + 1


def test_revocation_survives_without_redis(app, client, account) -> None:
    """With no Redis configured (or Redis unreachable) the database answers the check."""
    from app import create_app
    from tests.support.backends import test_config

    no_redis = create_app(
        test_config(app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL="redis://127.0.0.1:1/0")
    ).test_client()
    assert no_redis.get("/api/me", headers=account.headers).status_code == 200
    assert no_redis.post("/api/auth/logout", headers=account.headers).status_code == 204
    assert no_redis.get("/api/me", headers=account.headers).status_code == 401
