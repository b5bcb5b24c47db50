"""Health and readiness probes (contract §7)."""

from __future__ import annotations

from app import create_app
from tests.support.backends import REDIS_URL, test_config

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
    """SIGTERM marks the process draining (gunicorn.conf.py installs this in every worker): /ready
    then answers 503 while the handler gunicorn had still runs, so in-flight work finishes."""
    import os
    import signal

    from app.ops import draining

    received = []
    previous = signal.signal(signal.SIGUSR2, lambda sig, _frame: received.append(sig))
    try:
        client = create_app(test_config(app.config["SQLALCHEMY_DATABASE_URI"])).test_client()
        assert client.get("/ready").status_code == 200
        draining.drain_on(signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert received == [signal.SIGUSR2]  # the earlier handler (gunicorn's) still ran
        response = client.get("/ready")
        assert response.status_code == 503
        assert response.get_json()["status"] == "draining"
        assert client.get("/health").status_code == 200  # draining is not unhealthy
    finally:
        draining.reset()
        signal.signal(signal.SIGUSR2, previous)


def _silent_listener():
    """A TCP port that accepts connections and never answers: a hung dependency."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    return listener


def test_a_hung_database_makes_health_answer_unhealthy_not_hang(app):
    listener = _silent_listener()
    port = listener.getsockname()[1]
    try:
        hung = create_app(
            test_config(
                f"postgresql+psycopg://postgres@127.0.0.1:{port}/hung",
                REDIS_URL=None,
                PROBE_TIMEOUT_SECONDS=0.5,
            )
        )
        client = hung.test_client()
        response = client.get("/health")
        assert response.status_code == 503
        assert response.get_json()["checks"]["database"] == "timeout"
        assert response.get_json()["checks"]["disk"] == "sufficient"
        assert client.get("/ready").status_code == 503
    finally:
        listener.close()


def test_a_hung_redis_makes_health_degraded_not_hang(app):
    listener = _silent_listener()
    port = listener.getsockname()[1]
    try:
        hung = create_app(
            test_config(
                app.config["SQLALCHEMY_DATABASE_URI"], REDIS_URL=f"redis://127.0.0.1:{port}/0"
            )
        )
        response = hung.test_client().get("/health")
        assert response.status_code == 200
        body = response.get_json()
        assert body["status"] == "degraded"
        assert body["checks"]["database"] == "connected"
        assert body["checks"]["cache"] in ("disconnected", "timeout")
    finally:
        listener.close()
