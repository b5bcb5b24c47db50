"""The cache's Celery side with real worker processes: a write is written through by the worker
(with the request id of the write in the worker's log), `cache.warm` fills entries, and a task
whose worker is killed mid-run is delivered again and completes once in effect (Redis broker).

Broker: the one the app's settings resolve (CELERY_BROKER_URL, else REDIS_URL: Redis in CI), else
the embedded SQLite broker in a temporary directory. Workers run with APP_ENV=development so they
log JSON lines carrying the request id, as in production (the testing environment keeps Celery's
plain log format).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from flask import Flask

from app import create_app
from app.core.context import request_id_var
from app.core.events import Event
from app.extensions import db
from app.posts.cache import POST_KIND
from app.posts.models import Post
from app.users.cache import USER_KIND
from app.users.models import User
from tests.factories import login, register
from tests.support.backends import test_config
from tests.support.cache import cache_keys, entry
from tests.support.workers import Worker, broker_settings, sleep_marks, wait_for

# One xdist worker runs this module: its module-scoped fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("cache-workers")


@pytest.fixture(scope="module")
def broker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache-broker")


@pytest.fixture(scope="module")
def broker(broker_dir: Path) -> dict[str, str]:
    return broker_settings(broker_dir)


@pytest.fixture(scope="module")
def worker(app: Flask, broker: dict[str, str], broker_dir: Path) -> Iterator[Worker]:
    """One worker (solo pool) for the write-through and warm tests of this module."""
    running = Worker(app, broker_dir, broker).start("--pool=solo")
    try:
        yield running
    finally:
        running.stop()
        print(running.log()[-3000:])


@pytest.fixture
def producer(database_uri: str, broker: dict[str, str]) -> Flask:
    """The web app as deployed: it publishes the write-through tasks after each commit."""
    return create_app(test_config(database_uri, TASKS_ENABLED=True, **broker))


def _refreshed(kind: str, public_id: str, version: int) -> Callable[[], dict | None]:
    def check() -> dict | None:
        stored = entry(kind, public_id)
        return stored if stored and stored["v"] == version and "d" in stored else None

    return check


def _logged(worker: Worker, request_id: str, text: str) -> Callable[[], list[dict]]:
    def check() -> list[dict]:
        return [
            line
            for line in worker.lines()
            if line.get("request_id") == request_id and text in str(line.get("event"))
        ]

    return check


def _server_request_id(flask_app: Flask, public_id: str) -> str:
    """The server's id of the request behind the aggregate's latest event (its request_id)."""
    with flask_app.app_context():
        request_id = db.session.scalars(
            sa.select(Event.request_id)
            .where(Event.aggregate_id == uuid.UUID(public_id))
            .order_by(Event.id.desc())
            .limit(1)
        ).one()
        db.session.remove()
    assert request_id
    return request_id


# 6. Write-through and warming by a real worker -------------------------------------------------


def test_a_write_is_written_through_by_the_worker_with_its_request_id(
    worker: Worker, producer: Flask
) -> None:
    web = producer.test_client()
    user = register(web)
    headers = {"Authorization": f"Bearer {login(web, user['email'])['access_token']}"}

    request_id = f"req-cache-{uuid.uuid4().hex[:12]}"
    patched = web.patch(
        f"/api/users/{user['id']}",
        json={"display_name": "Through the worker"},
        headers={**headers, "X-Request-ID": request_id},
    )
    assert patched.status_code == 200
    assert patched.headers["X-Request-ID"] == request_id
    # Nobody reads through the API here: only the worker can turn the tombstone into a value.
    stored = wait_for("the worker to write v2 through", _refreshed(USER_KIND, user["id"], 2))
    assert stored["d"]["public"]["display_name"] == "Through the worker"
    # The task logs under the PATCH's request id (the client's, as echoed), with the server's id
    # of its event beside it.
    server_id = _server_request_id(producer, user["id"])
    assert server_id != request_id
    done = wait_for(
        "the task's log line with the PATCH's request id",
        _logged(worker, request_id, "cache.refresh_user"),
    )
    assert any("succeeded" in line["event"] for line in done), done
    assert {line.get("server_request_id") for line in done} == {server_id}

    post = web.post(
        f"/api/users/{user['id']}/posts",
        json={"title": "one", "status": "published"},
        headers=headers,
    )
    assert post.status_code == 201
    post_id = post.json["data"]["id"]
    post_request_id = f"req-post-{uuid.uuid4().hex[:12]}"
    assert (
        web.patch(
            f"/api/posts/{post_id}",
            json={"title": "two"},
            headers={**headers, "X-Request-ID": post_request_id},
        ).status_code
        == 200
    )
    stored = wait_for("the worker to write the post through", _refreshed(POST_KIND, post_id, 2))
    assert stored["d"]["public"]["title"] == "two"
    post_server_id = _server_request_id(producer, post_id)
    logged = wait_for(
        "the post task's log line", _logged(worker, post_request_id, "cache.refresh_post")
    )
    assert {line.get("server_request_id") for line in logged} == {post_server_id}
    # And the API serves what the worker wrote.
    assert web.get(f"/api/posts/{post_id}").json["data"]["title"] == "two"


def test_cache_warm_through_the_worker_fills_n_entries(
    app: Flask, worker: Worker, producer: Flask
) -> None:
    seeded = app.test_cli_runner().invoke(args=["seed", "--users", "12", "--posts-per-user", "1"])
    assert seeded.exit_code == 0, seeded.output
    assert cache_keys() == set()

    with app.app_context():
        newest_users = db.session.scalars(
            sa.select(User.public_id).order_by(User.created_at.desc(), User.id.desc())
        ).all()
        newest_posts = db.session.scalars(
            sa.select(Post.public_id).order_by(Post.created_at.desc(), Post.id.desc())
        ).all()
        db.session.remove()
    assert len(newest_users) == len(newest_posts) == 12

    celery = _celery(producer)
    request_id = f"req-warm-{uuid.uuid4().hex[:12]}"
    token = request_id_var.set(request_id)
    try:
        result = celery.send_task("cache.warm", args=[10])
    finally:
        request_id_var.reset(token)
    assert result.get(timeout=30) == {"users": 10, "posts": 10}

    assert len(cache_keys()) == 20
    for public_id in newest_users[:10]:
        assert entry(USER_KIND, public_id)["v"] == 1
    for public_id in newest_posts[:10]:
        assert "d" in entry(POST_KIND, public_id)
    for public_id in newest_users[10:]:
        assert entry(USER_KIND, public_id) is None
    wait_for("the warm task's log line", _logged(worker, request_id, "cache_warmed"))


def _celery(flask_app: Flask) -> Celery:
    from worker import make_celery

    return make_celery(flask_app)


# 7. A worker killed mid-task -------------------------------------------------------------------


def test_a_task_whose_worker_is_killed_is_redone_and_completes_once(
    app: Flask, database_uri: str, tmp_path: Path
) -> None:
    broker = broker_settings(tmp_path)
    if not broker["CELERY_BROKER_URL"].startswith(("redis://", "rediss://")):
        pytest.skip(
            "the embedded SQLite broker loses an acks_late message on kill -9 (library notes)"
        )
    visibility = 5
    settings = {**broker, "CELERY_VISIBILITY_TIMEOUT": str(visibility)}
    queue = f"test-sleep-{uuid.uuid4().hex[:8]}"  # only this test's workers consume it
    options = ("--pool=prefork", "--concurrency=1", "-Q", queue)
    celery = _celery(create_app(test_config(database_uri, **broker, CELERY_VISIBILITY_TIMEOUT=5)))
    assert celery.conf.broker_transport_options["visibility_timeout"] == visibility

    worker_a = Worker(app, tmp_path, broker, **settings).start(*options)
    worker_b = Worker(app, tmp_path, broker, **settings)
    try:
        token = uuid.uuid4().hex
        result = celery.send_task("worker.sleep", args=[3, token], queue=queue)
        wait_for(
            "worker A to receive and start the task",
            lambda: f"[{result.id}] received" in worker_a.log() and sleep_marks(token)[0] == 1,
            timeout=20,
        )
        received = time.monotonic()  # no earlier than the delivery Redis timed
        worker_a.kill9()
        assert sleep_marks(token) == (1, None), "A died before completing it"

        # The message is unacknowledged in Redis. A worker restores such messages once they are
        # older than the visibility timeout, when it starts (and in a slow periodic sweep): so
        # B comes up after the timeout, as a restarted worker would.
        time.sleep(max(0.0, received + visibility + 0.5 - time.monotonic()))
        killed = time.monotonic()
        worker_b.start(*options)
        outcome = result.get(timeout=30)
        assert time.monotonic() - killed < 30
        assert outcome == {"token": token, "run": 2, "first": True, "done_by": worker_b.nodename}
        assert sleep_marks(token) == (2, worker_b.nodename)
        time.sleep(1.5)  # and it is not delivered a third time
        assert sleep_marks(token) == (2, worker_b.nodename)
        assert f"[{result.id}] succeeded" in worker_b.log()
    finally:
        worker_a.stop()
        worker_b.stop()
        broker_client = redis.Redis.from_url(broker["CELERY_BROKER_URL"])
        broker_client.delete(queue)  # a message left behind by a failed run
        broker_client.close()
