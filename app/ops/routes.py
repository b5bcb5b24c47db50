"""Health and readiness probes."""

from __future__ import annotations

import shutil
from typing import Any

import marshmallow as ma
import sqlalchemy as sa
from flask import current_app, jsonify
from flask.typing import ResponseReturnValue

from app.core.api import ApiBlueprint
from app.core.redis_client import get_redis
from app.extensions import db

blp = ApiBlueprint("ops", __name__, description="Health and readiness probes.")


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


def check_database() -> str:
    try:
        db.session.execute(sa.text("SELECT 1"))
        return "connected"
    except Exception:  # any failure means the probe reports it; it must never raise
        db.session.rollback()
        return "disconnected"


def check_cache() -> str:
    client = get_redis(current_app.config["REDIS_URL"])
    if client is None:
        return "not_configured"
    try:
        client.ping()
        return "connected"
    except Exception:
        return "disconnected"


def check_disk() -> str:
    free = shutil.disk_usage(current_app.instance_path).free
    return "sufficient" if free >= current_app.config["DISK_MIN_FREE_BYTES"] else "low"


def migrations_at_head() -> bool:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    migrate_ext = current_app.extensions["migrate"]
    script = ScriptDirectory.from_config(migrate_ext.migrate.get_config())
    with db.engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    return current == set(script.get_heads())


@blp.route("/health", methods=["GET"])
@blp.doc(operationId="health", security=[])
@blp.alt_response(200, schema=HealthSchema, description="Healthy, or degraded (cache down).")
@blp.alt_response(503, schema=HealthSchema, description="Unhealthy: the database is down.")
def health() -> ResponseReturnValue:
    """Liveness with dependency checks: 503 only when the database is unreachable."""
    checks: dict[str, Any] = {
        "database": check_database(),
        "cache": check_cache(),
        "disk": check_disk(),
    }
    if checks["database"] != "connected":
        status, code = "unhealthy", 503
    elif checks["cache"] == "disconnected" or checks["disk"] != "sufficient":
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
    if current_app.extensions.get("draining"):
        return jsonify({"status": "draining"}), 503
    if check_database() != "connected":
        return jsonify({"status": "unavailable", "reason": "database unreachable"}), 503
    try:
        at_head = migrations_at_head()
    except Exception:
        at_head = False
    if not at_head:
        return jsonify({"status": "unavailable", "reason": "migrations not at head"}), 503
    return jsonify({"status": "ready"}), 200
