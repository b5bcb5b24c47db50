"""Parallel runs (pytest-xdist, `make test`): each worker process gets backends of its own.

A worker (`PYTEST_XDIST_WORKER` = gw0, gw1, ...) rewrites its environment before anything reads
it, so the in-process apps and every process a test starts (gunicorn, Celery, `make run`, the CLI)
use the worker's own:

- PostgreSQL: `<database>_<worker>` beside DATABASE_URL, created (empty) when the worker's
  session starts and dropped when it ends; the session fixture then migrates it as usual.
  A SQLite DATABASE_URL gets `_<worker>` before its suffix; the embedded default already is a
  file under the worker's own temporary directory.
- RabbitMQ (CELERY_BROKER_URL amqp://): one vhost shared, the queues' names suffixed with the
  worker (CELERY_DEFAULT_QUEUE, OUTBOX_QUEUE, WEBHOOKS_QUEUE); the drills of
  tests/system/test_rabbitmq.py name queues of each test's own anyway.
- Redis: one db number per worker, for the service's keys and the Celery broker alike (their keys
  never overlap), so one worker's resets, limits, cache statistics and queues never meet
  another's. The numbers are TEST_REDIS_DBS (e.g. `9,10,11,12`) when set, else the distinct ones
  REDIS_URL, CELERY_BROKER_URL and CELERY_RESULT_BACKEND name: CI's `…/13` and `…/14` give two
  workers two dbs. With fewer numbers than workers the run uses fewer workers (said in the
  header), never a shared db.

Without xdist (a plain `pytest`, `-n 0`, `-p no:xdist`) nothing changes: the environment's own
database and Redis db numbers are used as given.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

WORKER = os.environ.get("PYTEST_XDIST_WORKER") or None
REDIS_VARIABLES = ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")
# The broker queues the service names (settings' defaults), suffixed per worker on RabbitMQ.
QUEUE_VARIABLES = {
    "CELERY_DEFAULT_QUEUE": "celery",
    "OUTBOX_QUEUE": "events",
    "WEBHOOKS_QUEUE": "webhooks",
}
ISOLATED = "POSTBOARD_TEST_WORKER"  # set once the environment is the worker's own


def _is_redis(url: str) -> bool:
    return url.startswith(("redis://", "rediss://"))


def _redis_db(url: str) -> int:
    path = urlsplit(url).path.strip("/")
    return int(path) if path.isdigit() else 0


def _with_redis_db(url: str, number: int) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{number}"))


def redis_dbs(environ: Mapping[str, str] = os.environ) -> list[int]:
    """The Redis db numbers this run may use, one per worker; [] when no Redis is named."""
    numbers: list[int] = []
    for name in REDIS_VARIABLES:
        url = environ.get(name) or ""
        if _is_redis(url) and _redis_db(url) not in numbers:
            numbers.append(_redis_db(url))
    listed = environ.get("TEST_REDIS_DBS", "").strip()
    if numbers and listed:
        return [int(part) for part in re.split(r"[,\s]+", listed) if part]
    return numbers


def worker_database_url(url: str, worker: str) -> str:
    """The worker's own database beside `url` (PostgreSQL) or file beside it (SQLite)."""
    base = make_url(url)
    if base.drivername.startswith("sqlite"):
        stem, dot, suffix = (base.database or "test.sqlite3").rpartition(".")
        name = f"{stem}_{worker}.{suffix}" if dot else f"{suffix}_{worker}"
        return base.set(database=name).render_as_string(hide_password=False)
    return base.set(database=f"{base.database}_{worker}").render_as_string(hide_password=False)


def worker_environment(environ: Mapping[str, str], worker: str) -> dict[str, str]:
    """The variables to change for `worker` (gw0, gw1, ...): its database, its Redis db."""
    changes = {ISOLATED: worker}
    if environ.get("DATABASE_URL"):
        changes["DATABASE_URL"] = worker_database_url(environ["DATABASE_URL"], worker)
    dbs = redis_dbs(environ)
    number = int(worker.removeprefix("gw"))
    if dbs and number >= len(dbs):  # the controller trims the workers to the dbs (limit_workers)
        raise pytest.UsageError(f"no Redis db number for worker {worker}: only {dbs}")
    for name in REDIS_VARIABLES:
        url = environ.get(name) or ""
        if _is_redis(url):
            changes[name] = _with_redis_db(url, dbs[number])
    if (environ.get("CELERY_BROKER_URL") or "").startswith(("amqp", "pyamqp")):
        # One RabbitMQ vhost for every worker: queue names of the worker's own instead.
        for name, default in QUEUE_VARIABLES.items():
            changes[name] = f"{environ.get(name) or default}-{worker}"
    return changes


def isolate_worker() -> None:
    """In an xdist worker, point DATABASE_URL and the Redis URLs at the worker's own (see above).
    Called before anything reads them (tests/support/backends.py)."""
    # A process a test starts inherits the rewritten environment: it must not rewrite it again.
    if WORKER is None or os.environ.get(ISOLATED) == WORKER:
        return
    os.environ.update(worker_environment(os.environ, WORKER))


def _admin_engine(url: str) -> sa.Engine:
    maintenance = make_url(url).set(database="postgres")
    return sa.create_engine(maintenance, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)


def _quoted(url: str) -> str:
    return '"' + str(make_url(url).database).replace('"', '""') + '"'


def create_worker_database() -> None:
    """The worker's PostgreSQL database, new and empty (one a crashed run left is replaced)."""
    url = os.environ.get("DATABASE_URL") or ""
    if WORKER is None or not url.startswith("postgresql"):
        return
    engine = _admin_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {_quoted(url)} WITH (FORCE)"))
        conn.execute(sa.text(f"CREATE DATABASE {_quoted(url)}"))
    engine.dispose()


def drop_worker_database() -> None:
    url = os.environ.get("DATABASE_URL") or ""
    if WORKER is None or not url.startswith("postgresql"):
        return
    engine = _admin_engine(url)
    with engine.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {_quoted(url)} WITH (FORCE)"))
    engine.dispose()


def limit_workers(
    config: pytest.Config, environ: Mapping[str, str] = os.environ, worker: str | None = WORKER
) -> str | None:
    """In the xdist controller: no more workers than Redis db numbers. Says what it did."""
    specs = getattr(config.option, "tx", None) or []
    dbs = redis_dbs(environ)
    if worker is not None or not dbs or len(specs) <= len(dbs):
        return None
    config.option.tx = specs[: len(dbs)]
    return (
        f"{len(specs)} workers asked for, {len(dbs)} run: one Redis db number each "
        f"({', '.join(map(str, dbs))}); name more with TEST_REDIS_DBS"
    )
