"""The backfill framework (app/backfill) and the posts.slug expand -> backfill -> contract change
(migrations 0003, 0004, 0005), on a database of their own at the revisions they need.

The runner in-process (batches, checkpoint, resume, idempotency, claims), the CLI in-process and
as a real process (SIGKILL mid-way and resume; SIGTERM stops after the current batch), the
Celery task in a real worker, and the migrations: the whole sequence with the API writing
concurrently (PostgreSQL), the contract's refusal, downgrades, and lock_timeout failing the
concurrent index build fast.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_migrate import downgrade, upgrade

from app import create_app
from app.backfill import BackfillError, run_backfill
from app.backfill.checkpoint import AlreadyRunning, LeaseLost, load, runs
from app.backfill.core import BatchReport
from app.core.db import UTCDateTime
from app.core.security import passwords
from app.extensions import db
from app.posts.backfills import POST_SLUGS, posts
from app.posts.slugs import make_slug
from tests.factories import PASSWORD
from tests.support.backends import DATABASE_URL, ON_POSTGRES, REDIS_URL, needs_postgres
from tests.support.backends import test_config as base_config
from tests.support.paths import ROOT
from tests.support.scratch_db import scratch_database

# One xdist worker runs this module: its module-scoped fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("backfill")

EMAIL = "backfill-owner@example.com"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def make_app(uri: str, **extra: Any) -> Flask:
    return create_app(base_config(uri, BACKFILL_LEASE_SECONDS=30.0, **extra))


def engine_of(app: Flask) -> sa.Engine:
    with app.app_context():
        return db.engine


USERS = sa.table(
    "users",
    sa.column("id", sa.BigInteger),
    sa.column("public_id", sa.Uuid),
    *(sa.column(c, sa.String) for c in ("email", "username", "password_hash", "display_name")),
    sa.column("bio", sa.Text),
    sa.column("is_admin", sa.Boolean),
    sa.column("created_at", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
    sa.column("version", sa.Integer),
)
OLD_POSTS = sa.table(
    "posts",
    sa.column("public_id", sa.Uuid),
    sa.column("author_id", sa.BigInteger),
    *(sa.column(c, sa.String) for c in ("title", "body", "status")),
    *(sa.column(c, UTCDateTime()) for c in ("published_at", "created_at", "updated_at")),
    sa.column("version", sa.Integer),
)


def seed(app: Flask, count: int, *, title: str = "Old post {i}: Ünïcode & more") -> None:
    """A user and `count` posts as a release before slugs wrote them (slug NULL, version 1)."""
    with engine_of(app).begin() as conn:
        author = conn.scalar(sa.select(USERS.c.id).where(USERS.c.email == EMAIL))
        if author is None:
            author = conn.execute(
                sa.insert(USERS)
                .values(
                    public_id=uuid.uuid4(),
                    email=EMAIL,
                    username="backfill_owner",
                    password_hash=passwords.hash(PASSWORD),
                    display_name="Owner",
                    bio="",
                    is_admin=False,
                    created_at=T0,
                    updated_at=T0,
                    version=1,
                )
                .returning(USERS.c.id)
            ).scalar_one()
        conn.execute(
            sa.insert(OLD_POSTS),
            [
                {
                    "public_id": uuid.uuid4(),
                    "author_id": author,
                    "title": title.format(i=i),
                    "body": "b",
                    "status": "published",
                    "published_at": T0,
                    "created_at": T0,
                    "updated_at": T0,
                    "version": 1,
                }
                for i in range(count)
            ],
        )


def rows(app: Flask) -> list[sa.Row[Any]]:
    with engine_of(app).connect() as conn:
        return conn.execute(
            sa.select(posts.c.id, posts.c.public_id, posts.c.title, posts.c.slug)
            .add_columns(sa.column("version"), sa.column("updated_at"))
            .select_from(posts)
            .order_by(posts.c.id)
        ).all()


def checkpoint_of(app: Flask) -> Any:
    with engine_of(app).connect() as conn:
        return load(conn, POST_SLUGS.name)


def missing(app: Flask) -> int:
    with engine_of(app).connect() as conn:
        return POST_SLUGS.count_missing(conn)


@pytest.fixture(scope="module")
def expand_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One database at revision 0003 (the expand step) for this module's runner and CLI tests."""
    workdir = tmp_path_factory.mktemp("backfill")
    with scratch_database(DATABASE_URL, workdir, "bf") as uri:
        app = make_app(uri)
        with app.app_context():
            upgrade(revision="0003")
            db.engine.dispose()
        yield uri


@pytest.fixture
def expand_app(expand_uri: str) -> Iterator[Flask]:
    app = make_app(expand_uri)
    with engine_of(app).begin() as conn:
        for table in ("backfill_runs", "posts", "users"):
            conn.execute(sa.text(f"DELETE FROM {table}"))
    yield app
    engine_of(app).dispose()


def run(app: Flask, **kw: Any) -> Any:
    return run_backfill(POST_SLUGS, engine_of(app), **{"batch_size": 100, **kw})


# The runner ------------------------------------------------------------------------------------


def test_run_fills_every_missing_row_in_key_order_without_touching_versions(expand_app) -> None:
    seed(expand_app, 250)
    before = rows(expand_app)
    reports: list[BatchReport] = []

    result = run(expand_app, batch_size=100, on_batch=reports.append)

    assert (result.state, result.rows_written, result.batches) == ("done", 250, 3)
    assert [(r.rows, r.written) for r in reports] == [(100, 100), (100, 100), (50, 50)]
    assert [r.last_key for r in reports] == [before[99].id, before[199].id, before[249].id]
    after = rows(expand_app)
    for old, new in zip(before, after, strict=True):
        assert new.slug == make_slug(old.title, old.public_id)
        assert (new.version, new.updated_at) == (old.version, old.updated_at)  # no ETag churn
    saved = checkpoint_of(expand_app)
    assert (saved.state, saved.rows_done, saved.batches, saved.last_key) == (
        "done",
        250,
        3,
        before[-1].id,
    )
    assert saved.finished_at is not None


def test_a_second_run_finds_nothing_to_do(expand_app) -> None:
    seed(expand_app, 30)
    run(expand_app)
    slugs = [r.slug for r in rows(expand_app)]

    again = run(expand_app)

    assert (again.state, again.rows_written, again.batches) == ("done", 0, 0)
    assert [r.slug for r in rows(expand_app)] == slugs
    assert checkpoint_of(expand_app).rows_done == 0  # a fresh walk, which found nothing


def test_stop_between_batches_keeps_the_checkpoint_and_a_new_run_resumes(expand_app) -> None:
    seed(expand_app, 95)
    stop = threading.Event()

    def stop_after_second(report: BatchReport) -> None:
        if report.batch == 2:
            stop.set()

    first = run(expand_app, batch_size=20, stop=stop, on_batch=stop_after_second)
    assert (first.state, first.rows_written, first.batches) == ("stopped", 40, 2)
    saved = checkpoint_of(expand_app)
    ids = [r.id for r in rows(expand_app)]
    assert (saved.state, saved.last_key, saved.rows_done) == ("stopped", ids[39], 40)
    assert all((r.slug is not None) == (r.id <= saved.last_key) for r in rows(expand_app))

    resumed: list[BatchReport] = []
    second = run(expand_app, batch_size=20, on_batch=resumed.append)
    assert (second.state, second.rows_written, second.batches) == ("done", 55, 3)
    assert resumed[0].last_key == ids[59]  # started after the checkpoint, not from the start
    assert checkpoint_of(expand_app).rows_done == 95
    assert missing(expand_app) == 0


def test_rows_already_written_by_the_app_are_left_alone(expand_app) -> None:
    seed(expand_app, 40)
    ids = [r.id for r in rows(expand_app)]
    with engine_of(expand_app).begin() as conn:
        conn.execute(
            sa.update(posts)
            .where(posts.c.id.in_(ids[::2]))
            .values(slug=sa.literal("x-") + sa.cast(posts.c.id, sa.String))
        )
    result = run(expand_app, batch_size=10)
    assert (result.state, result.rows_written) == ("done", 20)
    for r in rows(expand_app):
        if r.id in ids[::2]:
            assert r.slug == f"x-{r.id}"
        else:
            assert r.slug == make_slug(r.title, r.public_id)


@needs_postgres
def test_a_row_written_concurrently_during_a_batch_is_not_overwritten(expand_app) -> None:
    """Between the batch's SELECT and its UPDATE another transaction gives a row its slug: the
    UPDATE's `slug IS NULL` guard skips it (PostgreSQL re-checks it on the committed row)."""
    seed(expand_app, 10)
    target = rows(expand_app)[3]
    compute = POST_SLUGS.compute

    def racing_compute(batch: Any) -> Any:
        with engine_of(expand_app).begin() as other:
            other.execute(
                sa.update(posts).where(posts.c.id == target.id).values(slug="written-by-the-api")
            )
        return compute(batch)

    racing = dataclasses.replace(POST_SLUGS, compute=racing_compute)
    result = run_backfill(racing, engine_of(expand_app), batch_size=100)
    assert (result.state, result.rows_written) == ("done", 9)
    assert {r.id: r.slug for r in rows(expand_app)}[target.id] == "written-by-the-api"


def test_rows_that_go_missing_behind_the_checkpoint_get_another_pass(expand_app) -> None:
    seed(expand_app, 30)
    first_id = rows(expand_app)[0].id

    def unset_first(report: BatchReport) -> None:
        if report.batch == 2:  # an older release writes a post with no slug, behind us
            with engine_of(expand_app).begin() as conn:
                conn.execute(sa.update(posts).where(posts.c.id == first_id).values(slug=None))

    result = run(expand_app, batch_size=10, on_batch=unset_first)
    assert result.state == "done"
    assert result.rows_written == 31
    assert missing(expand_app) == 0


def test_a_failed_run_records_why_and_the_next_run_resumes(expand_app) -> None:
    seed(expand_app, 30)
    poison = rows(expand_app)[15].id

    def failing(batch: Any) -> Any:
        if any(r.id == poison for r in batch):
            raise ValueError("cannot compute this one\nsecond line")
        return POST_SLUGS.compute(batch)

    broken = dataclasses.replace(POST_SLUGS, compute=failing)
    with pytest.raises(ValueError, match="cannot compute"):
        run_backfill(broken, engine_of(expand_app), batch_size=10)
    saved = checkpoint_of(expand_app)
    assert saved.state == "failed"
    assert saved.error == "ValueError: cannot compute this one"
    assert saved.rows_done == 10  # the failing batch rolled back whole
    assert missing(expand_app) == 20

    result = run(expand_app, batch_size=10)
    assert (result.state, result.rows_written) == ("done", 20)
    assert checkpoint_of(expand_app).error is None


def test_a_live_run_cannot_be_claimed_twice_but_a_dead_or_silent_one_is_resumed(
    expand_app,
) -> None:
    seed(expand_app, 5)
    now = datetime.now(UTC)
    alive = f"{socket.gethostname()}:{os.getppid()}"  # pytest's parent: alive, not us
    with engine_of(expand_app).begin() as conn:
        conn.execute(
            sa.insert(runs).values(
                name=POST_SLUGS.name,
                state="running",
                owner=alive,
                generation=7,
                last_key=None,
                rows_done=0,
                batches=0,
                started_at=now,
                heartbeat_at=now,
            )
        )
    with pytest.raises(AlreadyRunning, match="already running"):
        run(expand_app)

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with engine_of(expand_app).begin() as conn:
        conn.execute(sa.update(runs).values(owner=f"{socket.gethostname()}:{dead.pid}"))
    assert run(expand_app).state == "done"  # same host, process gone: taken over at once

    with engine_of(expand_app).begin() as conn:
        conn.execute(
            sa.update(runs).values(
                state="running", owner="another-host:1", heartbeat_at=now - timedelta(seconds=10)
            )
        )
    with pytest.raises(AlreadyRunning):
        run(expand_app, lease_seconds=60)
    assert run(expand_app, lease_seconds=5).state == "done"  # silent longer than its lease
    assert checkpoint_of(expand_app).generation == 9


def test_a_run_that_was_taken_over_stops_without_writing(expand_app) -> None:
    seed(expand_app, 30)

    def steal(report: BatchReport) -> None:
        with engine_of(expand_app).begin() as conn:
            conn.execute(sa.update(runs).values(generation=runs.c.generation + 1))

    with pytest.raises(LeaseLost):
        run(expand_app, batch_size=10, on_batch=steal)
    assert missing(expand_app) == 20  # the second batch rolled back with its checkpoint


def test_a_compute_that_never_fills_a_row_gives_up_with_a_reason(expand_app) -> None:
    seed(expand_app, 3)
    useless = dataclasses.replace(
        POST_SLUGS, compute=lambda batch: {r.id: {"slug": None} for r in batch}
    )
    with pytest.raises(BackfillError, match="still missing after 3 passes"):
        run_backfill(useless, engine_of(expand_app), batch_size=10)
    assert checkpoint_of(expand_app).state == "failed"


# The CLI -----------------------------------------------------------------------------------------


def cli(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["backfill", *args])


def one_line_error(result: Any) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_cli_list_status_and_run(expand_app) -> None:
    seed(expand_app, 45)
    listed = cli(expand_app, "list")
    assert listed.exit_code == 0, listed.output
    assert "post_slugs  never run  missing 45" in listed.output

    status = cli(expand_app, "status", "post_slugs")
    assert status.output.strip() == "post_slugs: never run; 45 rows missing"

    ran = cli(expand_app, "run", "post_slugs", "--batch-size", "20", "--sleep", "0")
    assert ran.exit_code == 0, ran.output
    assert "backfill post_slugs done: 45 rows written in 3 batches" in ran.output
    assert missing(expand_app) == 0

    status = cli(expand_app, "status", "post_slugs")
    assert status.exit_code == 0
    assert status.output.startswith("post_slugs: done; 45 rows written in 3 batches, checkpoint")
    assert "0 rows missing" in status.output
    assert "post_slugs  done  missing 0" in cli(expand_app, "list").output


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["run", "no_such_backfill"], "unknown backfill 'no_such_backfill' (known: post_slugs)"),
        (["status", "no_such_backfill"], "unknown backfill"),
        (["run", "post_slugs", "--batch-size", "0"], "--batch-size"),
        (["run", "post_slugs", "--sleep", "-1"], "--sleep"),
        (["run"], "Missing argument 'NAME'"),
    ],
)
def test_cli_bad_input_exits_non_zero_with_one_line(expand_app, args, reason) -> None:
    seed(expand_app, 3)
    result = cli(expand_app, *args)
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(error_lines) == 1, result.output
    assert reason in error_lines[0]
    assert missing(expand_app) == 3


def test_cli_refuses_while_another_run_holds_the_backfill(expand_app) -> None:
    seed(expand_app, 3)
    now = datetime.now(UTC)
    with engine_of(expand_app).begin() as conn:
        conn.execute(
            sa.insert(runs).values(
                name=POST_SLUGS.name,
                state="running",
                owner="elsewhere:42",
                generation=1,
                rows_done=0,
                batches=0,
                started_at=now,
                heartbeat_at=now,
            )
        )
    line = one_line_error(cli(expand_app, "run", "post_slugs"))
    assert "already running (elsewhere:42" in line
    assert "running (elsewhere:42" in cli(expand_app, "status", "post_slugs").output


# Real processes: SIGKILL and SIGTERM -------------------------------------------------------------


def flask_env(uri: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "APP_ENV": "testing",
        "DATABASE_URL": uri,
        "REDIS_URL": REDIS_URL or "",
        "INSTANCE_PATH": str(tmp_path),
        "CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONUNBUFFERED": "1",
        **extra,
    }


def start_backfill(uri: str, tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "flask"), "--app", "wsgi", "backfill", "run", *args],
        cwd=ROOT,
        env=flask_env(uri, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_batches(app: Flask, proc: subprocess.Popen[str], at_least: int) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        saved = checkpoint_of(app)
        if saved is not None and saved.batches >= at_least:
            return saved
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    pytest.fail("the backfill made no progress")


def assert_filled_exactly_up_to_checkpoint(app: Flask) -> Any:
    saved = checkpoint_of(app)
    current = rows(app)
    assert all((r.slug is not None) == (r.id <= saved.last_key) for r in current)
    assert sum(r.slug is not None for r in current) == saved.rows_done
    return saved


def test_sigkill_mid_way_then_resume(expand_uri, expand_app, tmp_path) -> None:
    seed(expand_app, 600)
    proc = start_backfill(
        expand_uri, tmp_path, "post_slugs", "--batch-size", "20", "--sleep", "0.05"
    )
    wait_for_batches(expand_app, proc, 4)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)

    saved = assert_filled_exactly_up_to_checkpoint(expand_app)
    assert saved.state == "running"  # nobody could record the kill ...
    assert 0 < saved.rows_done < 600
    status = cli(expand_app, "status", "post_slugs")
    assert "interrupted (its process is gone" in status.output  # ... but status sees it

    resumed = cli(expand_app, "run", "post_slugs", "--batch-size", "50")
    assert resumed.exit_code == 0, resumed.output  # taken over at once: same host, pid gone
    assert f"{600 - saved.rows_done} rows written" in resumed.output
    assert checkpoint_of(expand_app).rows_done == 600
    assert all(r.slug == make_slug(r.title, r.public_id) for r in rows(expand_app))


def test_sigterm_stops_after_the_current_batch_with_the_checkpoint_saved(
    expand_uri, expand_app, tmp_path
) -> None:
    seed(expand_app, 600)
    proc = start_backfill(
        expand_uri, tmp_path, "post_slugs", "--batch-size", "20", "--sleep", "0.05"
    )
    wait_for_batches(expand_app, proc, 3)
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=30)

    assert proc.returncode == 1
    assert "backfill post_slugs stopped on request" in err
    assert "run it again to resume" in err
    assert "Traceback" not in err
    saved = assert_filled_exactly_up_to_checkpoint(expand_app)
    assert saved.state == "stopped"
    assert saved.rows_done % 20 == 0  # whole batches only
    assert 0 < saved.rows_done < 600

    resumed = cli(expand_app, "run", "post_slugs")
    assert resumed.exit_code == 0, resumed.output
    assert missing(expand_app) == 0
    assert checkpoint_of(expand_app).rows_done == 600


# The Celery task in a real worker ----------------------------------------------------------------


@pytest.mark.slow
def test_celery_task_runs_in_slices_until_done(expand_uri, expand_app, tmp_path) -> None:
    from worker import make_celery

    seed(expand_app, 300)
    broker = os.environ.get("CELERY_BROKER_URL")
    urls = (
        {"CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": broker}
        if broker
        else {
            "CELERY_BROKER_URL": f"sqla+sqlite:///{tmp_path / 'broker.sqlite3'}",
            "CELERY_RESULT_BACKEND": f"db+sqlite:///{tmp_path / 'results.sqlite3'}",
        }
    )
    env = flask_env(
        expand_uri,
        tmp_path,
        **urls,
        BACKFILL_BATCH_SIZE="10",
        BACKFILL_SLEEP_SECONDS="0.05",
        BACKFILL_TASK_SECONDS="0.4",
    )
    log_path = tmp_path / "worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "worker", "worker", "--pool=solo",
             "--loglevel=INFO", "--without-heartbeat", "--without-gossip", "--without-mingle",
             "-Q", "celery"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while "ready." not in log_path.read_text() and time.monotonic() < deadline:
                assert worker.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            producer = make_celery(make_app(expand_uri, **urls))
            producer.send_task("backfill.run", args=["post_slugs"])
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                saved = checkpoint_of(expand_app)
                if saved is not None and saved.state == "done":
                    break
                assert worker.poll() is None, log_path.read_text()[-3000:]
                time.sleep(0.2)
            else:
                pytest.fail("backfill not done: " + log_path.read_text()[-3000:])
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
    assert missing(expand_app) == 0
    assert saved.rows_done == 300
    assert saved.generation >= 3  # several slices, each a claim that resumed the checkpoint


# The migrations: expand -> backfill -> contract ----------------------------------------------


@pytest.fixture
def fresh_uri(tmp_path: Path) -> Iterator[str]:
    with scratch_database(DATABASE_URL, tmp_path, "slug") as uri:
        yield uri


def revision_of(app: Flask) -> str | None:
    with engine_of(app).connect() as conn:
        return conn.scalar(sa.text("SELECT version_num FROM alembic_version"))


def slug_column(app: Flask) -> dict[str, Any] | None:
    with engine_of(app).connect() as conn:
        columns = {c["name"]: c for c in sa.inspect(conn).get_columns("posts")}
    return columns.get("slug")


def insert_slugless(app: Flask) -> None:
    seed(app, 1, title="Written by an old release")


def migrate(app: Flask, revision: str, *, down: bool = False) -> None:
    with app.app_context():
        (downgrade if down else upgrade)(revision=revision)
        db.engine.dispose()


def test_expand_backfill_contract_and_every_downgrade(fresh_uri, caplog) -> None:
    app = make_app(fresh_uri, BACKFILL_BATCH_SIZE=7)
    migrate(app, "0002")
    seed(app, 40)
    client = app.test_client()
    assert client.get("/ready").status_code == 503  # this code cannot serve 0002
    window_too_wide = make_app(fresh_uri, READY_MIN_REVISION="0001").test_client()
    assert window_too_wide.get("/ready").status_code == 503  # nor with a window reaching it

    migrate(app, "0003")  # expand: nullable column, unique index, checkpoint table
    assert slug_column(app)["nullable"] is True
    assert missing(app) == 40
    assert client.get("/ready").status_code == 503  # not at head: by default, not ready
    rollout = make_app(fresh_uri, READY_MIN_REVISION="0003").test_client()
    assert rollout.get("/ready").status_code == 200  # the operator opened the expand window
    too_old = make_app(fresh_uri, READY_MIN_REVISION="0001").test_client()
    assert too_old.get("/ready").status_code == 200  # clamped to the code's floor, 0003
    with engine_of(app).connect() as conn:
        indexes = {i["name"]: i for i in sa.inspect(conn).get_indexes("posts")}
    assert indexes["uq_posts_slug"]["unique"]

    migrate(app, "0004")  # backfill, in batches of 7
    assert missing(app) == 0
    saved = checkpoint_of(app)
    assert (saved.state, saved.rows_done, saved.batches) == ("done", 40, 6)
    expected = {r.id: make_slug(r.title, r.public_id) for r in rows(app)}
    assert {r.id: r.slug for r in rows(app)} == expected

    insert_slugless(app)  # an old release still writing: the contract must refuse
    caplog.set_level(logging.ERROR, logger="flask_migrate")
    with pytest.raises(SystemExit):
        migrate(app, "0005")
    assert "migration 0005 refused: 1 posts still have no slug" in caplog.text
    assert "flask backfill run post_slugs" in caplog.text
    assert revision_of(app) == "0004"
    assert slug_column(app)["nullable"] is True
    insert_slugless(app)  # nothing was left behind that refuses NULLs (no stray CHECK)

    result = app.test_cli_runner().invoke(args=["backfill", "run", "post_slugs"])
    assert result.exit_code == 0, result.output
    migrate(app, "0005")  # contract
    assert revision_of(app) == "0005"
    assert slug_column(app)["nullable"] is False
    with pytest.raises(sa.exc.IntegrityError):
        insert_slugless(app)
    migrate(app, "head")  # the migrations after the contract (0006 on) change no slug
    assert client.get("/ready").status_code == 200
    slugs = {r.id: r.slug for r in rows(app)}

    migrate(app, "0004", down=True)
    assert slug_column(app)["nullable"] is True
    assert {r.id: r.slug for r in rows(app)} == slugs  # data kept
    migrate(app, "0003", down=True)  # nothing to undo: slugs are valid data at 0003
    assert {r.id: r.slug for r in rows(app)} == slugs
    migrate(app, "0002", down=True)
    assert slug_column(app) is None
    with engine_of(app).connect() as conn:
        assert "backfill_runs" not in sa.inspect(conn).get_table_names()
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("posts")}
    assert "uq_posts_slug" not in indexes
    assert {"ix_posts_published_created", "ix_posts_author_created"} <= indexes
    if not ON_POSTGRES:
        with engine_of(app).connect() as conn:
            ddl = conn.scalar(
                sa.text("SELECT sql FROM sqlite_master WHERE name = 'ix_posts_author_created'")
            )
        assert "created_at DESC, id DESC" in ddl  # batch mode's rebuild did not lose it

    migrate(app, "head")  # and up again, all the way
    assert missing(app) == 0
    assert revision_of(app) == HEAD


# The newest revision (file names start with their four-digit id).
HEAD = max(path.name[:4] for path in (ROOT / "migrations" / "versions").glob("[0-9]*.py"))


def test_the_migration_backfill_finds_nothing_when_the_operator_ran_it(fresh_uri) -> None:
    app = make_app(fresh_uri)
    migrate(app, "0002")
    seed(app, 25)
    migrate(app, "0003")
    ran = app.test_cli_runner().invoke(args=["backfill", "run", "post_slugs"])
    assert ran.exit_code == 0, ran.output
    slugs = {r.id: r.slug for r in rows(app)}

    migrate(app, "0004")

    saved = checkpoint_of(app)
    assert (saved.state, saved.rows_done, saved.batches) == ("done", 0, 0)
    assert {r.id: r.slug for r in rows(app)} == slugs


@needs_postgres
def test_lock_timeout_fails_the_concurrent_index_build_fast_and_a_rerun_repairs_it(
    fresh_uri,
) -> None:
    """CREATE INDEX CONCURRENTLY waits for every older snapshot; env.py's lock_timeout holds in
    the autocommit block too, so it gives up after 5 s instead of hanging, and leaves an INVALID
    index that the next `flask db upgrade` drops and builds again."""
    app = make_app(fresh_uri)
    migrate(app, "0002")
    seed(app, 10)
    blocker = sa.create_engine(fresh_uri).connect()
    try:
        blocker.execution_options(isolation_level="REPEATABLE READ")
        blocker.begin()
        blocker.execute(sa.text("SELECT count(*) FROM users"))  # holds a snapshot, no lock on posts
        started = time.monotonic()
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            migrate(app, "0003")
        assert time.monotonic() - started < 30
    finally:
        blocker.rollback()
        blocker.close()
    assert revision_of(app) == "0002"
    with engine_of(app).connect() as conn:
        valid = conn.scalar(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'uq_posts_slug'::regclass")
        )
    assert valid is False

    migrate(app, "0003")
    assert revision_of(app) == "0003"
    with engine_of(app).connect() as conn:
        valid = conn.scalar(
            sa.text("SELECT indisvalid FROM pg_index WHERE indexrelid = 'uq_posts_slug'::regclass")
        )
    assert valid is True
