"""Health and readiness probes (contract §7)."""

from __future__ import annotations

from app import create_app
from tests.conftest import REDIS_URL, test_config

DEAD_REDIS = "redis://127.0.0.1:1/0"


def test_health_reports_every_check(client):
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 200
    assert set(body) == {"status", "checks"}
    assert body["checks"]["database"] == "connected"
    assert body["checks"]["disk"] == "sufficient"
    if REDIS_URL:
        assert body == {"status": "healthy", "checks": body["checks"]}
        assert body["checks"]["cache"] == "connected"
    else:
        assert body["checks"]["cache"] == "not_configured"
        assert body["status"] == "healthy"


def test_health_is_degraded_when_redis_is_down(app):
    down = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=DEAD_REDIS))
    response = down.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "degraded",
        "checks": {"database": "connected", "cache": "disconnected", "disk": "sufficient"},
    }


def test_health_is_unhealthy_503_when_the_database_is_down(app):
    down = create_app(
        test_config("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", REDIS_URL=None)
    )
    response = down.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unhealthy"
    assert body["checks"]["database"] == "disconnected"


def test_health_reports_low_disk(app):
    tight = create_app(
        test_config(app.config["SQLALCHEMY_DATABASE_URI"], DISK_MIN_FREE_BYTES=2**62)
    )
    body = tight.test_client().get("/health").get_json()
    assert body["checks"]["disk"] == "low"
    assert body["status"] == "degraded"


def test_ready_at_head(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ready"}


def test_not_ready_before_migrations(tmp_path):
    fresh = create_app(test_config(f"sqlite:///{tmp_path / 'empty.sqlite3'}"))
    response = fresh.test_client().get("/ready")
    assert response.status_code == 503
    assert response.get_json()["reason"] == "migrations not at head"


def test_not_ready_without_database():
    down = create_app(test_config("postgresql+psycopg://postgres@127.0.0.1:1/nowhere"))
    response = down.test_client().get("/ready")
    assert response.status_code == 503


def test_not_ready_while_draining(app):
    draining = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"]))
    draining.extensions["draining"] = True
    response = draining.test_client().get("/ready")
    assert response.status_code == 503
    assert response.get_json()["status"] == "draining"
