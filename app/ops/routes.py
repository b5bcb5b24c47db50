"""Health and readiness probes, and the Prometheus metrics endpoint."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import marshmallow as ma
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask import Response, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from app.core.api import ApiBlueprint
from app.core.cache import app_cache
from app.core.errors import Unauthenticated
from app.core.metrics import ScrapeRefused, authorize_scrape, render
from app.core.redis_client import get_redis
from app.extensions import db
from app.ops import draining
from app.settings import settings

blp = ApiBlueprint("ops", __name__, description="Health and readiness probes, metrics.")


class HealthChecksSchema(ma.Schema):
    database = ma.fields.String(required=True, metadata={"example": "connected"})
    cache = ma.fields.String(required=True, metadata={"example": "connected"})
    disk = ma.fields.String(required=True, metadata={"example": "sufficient"})


class HealthSchema(ma.Schema):
    status = ma.fields.String(
        required=True, validate=ma.validate.OneOf(["healthy", "degraded", "unhealthy"])
    )
    checks = ma.fields.Nested(HealthChecksSchema, required=True)


class ReadySchema(ma.Schema):
    status = ma.fields.String(
        required=True, validate=ma.validate.OneOf(["ready", "draining", "unavailable"])
    )
    reason = ma.fields.String()


# Every probe check runs under one deadline (PROBE_TIMEOUT_SECONDS): a hung dependency (a
# database that accepted the connection but never answers, a stalled disk) makes its check
# report "timeout", never hangs the probe. The checks run in a small pool of their own, so a
# check still stuck from an earlier probe only queues the next ones (they time out too) and
# never piles up threads.
_probe_pool = ThreadPoolExecutor(max_workers=3, thread_name_prefix="probe")


def _run_checks(checks: dict[str, Callable[[], str]]) -> dict[str, str]:
    app = current_app._get_current_object()  # type: ignore[attr-defined]

    def in_context(check: Callable[[], str]) -> str:
        with app.app_context():
            return check()

    futures = {name: _probe_pool.submit(in_context, check) for name, check in checks.items()}
    deadline = time.monotonic() + float(app.config["PROBE_TIMEOUT_SECONDS"])
    results = {}
    for name, future in futures.items():
        try:
            results[name] = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except FutureTimeout:
            results[name] = "timeout"
        except Exception:  # a check must report, never raise
            results[name] = "error"
    return results


def check_database() -> str:
    try:
        # Its own connection, not the request's session: the check runs in a probe thread.
        with db.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        return "connected"
    except Exception:  # any failure means the probe reports it; it must never raise
        return "disconnected"


def check_cache() -> str:
    client = get_redis(current_app.config["REDIS_URL"])
    if client is None:
        return "not_configured"
    if app_cache().breaker.current_state != "closed":
        return "disconnected"  # failed just now: no PING to wait out (its probe retries)
    try:
        client.ping()
        return "connected"
    except Exception:
        return "disconnected"


def check_disk() -> str:
    free = shutil.disk_usage(current_app.instance_path).free
    return "sufficient" if free >= current_app.config["DISK_MIN_FREE_BYTES"] else "low"


# The oldest schema revision this code can run on: the expand step of the latest expand ->
# contract change (0003 adds posts.slug nullable; the code handles NULL slugs until 0005).
OLDEST_SERVED_REVISION = "0003"


def migrations_at_head() -> bool:
    """At head; or, when the operator opens the expand window (READY_MIN_REVISION, during an
    expand -> contract rollout), at a revision from there to head. The window never reaches
    below OLDEST_SERVED_REVISION, the oldest schema this code can serve."""
    from alembic.runtime.migration import MigrationContext

    migrate_ext = current_app.extensions["migrate"]
    script = ScriptDirectory.from_config(migrate_ext.migrate.get_config())
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current == set(script.get_heads()):
        return True
    window = current_app.config.get("READY_MIN_REVISION") or None
    if not window or not current:
        return False
    servable = _revisions_from(script, OLDEST_SERVED_REVISION)
    if window not in servable:
        window = OLDEST_SERVED_REVISION  # older than the code can serve: the floor wins
    return current <= _revisions_from(script, window)


def _revisions_from(script: ScriptDirectory, lowest: str) -> set[str]:
    later = script.iterate_revisions("heads", lowest)  # excludes the lower end
    return {lowest, *(rev.revision for rev in later)}


@blp.route("/health", methods=["GET"])
@blp.doc(operationId="health", security=[])
@blp.alt_response(200, schema=HealthSchema, description="Healthy, or degraded (cache down).")
@blp.alt_response(503, schema=HealthSchema, description="Unhealthy: the database is down.")
def health() -> ResponseReturnValue:
    """Liveness with dependency checks: 503 only when the database is unreachable."""
    checks = _run_checks({"database": check_database, "cache": check_cache, "disk": check_disk})
    if checks["database"] != "connected":
        status, code = "unhealthy", 503
    elif checks["cache"] not in ("connected", "not_configured") or checks["disk"] != "sufficient":
        status, code = "degraded", 200
    else:
        status, code = "healthy", 200
    return jsonify({"status": status, "checks": checks}), code


@blp.route("/ready", methods=["GET"])
@blp.doc(operationId="ready", security=[])
@blp.alt_response(200, schema=ReadySchema, description="Ready to serve.")
@blp.alt_response(503, schema=ReadySchema, description="Starting, draining or database down.")
def ready() -> ResponseReturnValue:
    """Readiness: the database is reachable and migrations are at head, and not draining."""
    if draining.is_draining():
        return jsonify({"status": "draining"}), 503
    if _run_checks({"database": check_database})["database"] != "connected":
        return jsonify({"status": "unavailable", "reason": "database unreachable"}), 503
    try:
        at_head = migrations_at_head()
    except Exception:
        at_head = False
    if not at_head:
        return jsonify({"status": "unavailable", "reason": "migrations not at head"}), 503
    return jsonify({"status": "ready"}), 200


@blp.route("/metrics", methods=["GET"])
@blp.doc(
    operationId="metrics",
    # Production: always `Authorization: Bearer <METRICS_TOKEN>`; elsewhere open unless it is set.
    security=[{"metricsToken": []}, {}],
    responses={
        200: {
            "description": "Prometheus text exposition format (version 0.0.4), aggregated over "
            "every gunicorn worker and, when CELERY_METRICS_DIR is set, the Celery workers.",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        }
    },
)
@blp.alt_response(401, response="UNAUTHORIZED")  # production, or wherever METRICS_TOKEN is set
def metrics() -> ResponseReturnValue:
    """Prometheus metrics: requests, latency, cache, rate limits, Celery queues and tasks."""
    token = current_app.config["METRICS_TOKEN"]
    try:
        if not token and settings().production:
            # Fail closed: production without a token configured has no token to accept.
            raise ScrapeRefused("invalid" if request.headers.get("Authorization") else "missing")
        authorize_scrape(request.headers.get("Authorization"), token)
    except ScrapeRefused as refused:
        if refused.reason == "missing":
            raise Unauthenticated("A metrics token is required (METRICS_TOKEN).") from None
        raise Unauthenticated(
            "The metrics token is not valid.",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        ) from None
    body, content_type = render(current_app.config)
    return Response(body, status=200, content_type=content_type)
