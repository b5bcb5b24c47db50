"""RabbitMQ as the Celery broker (contract §10 "Brokers"), with real worker processes on the
server RABBITMQ_URL names: every queue is a quorum queue, publishes are confirmed, and the
reliability drills of the Redis broker hold: a worker killed mid-task has the task redone once
and completed once; a worker sent SIGTERM mid-task finishes it and loses nothing.

Each test has queues of its own (CELERY_DEFAULT_QUEUE, OUTBOX_QUEUE, WEBHOOKS_QUEUE), deleted
after. Results stay where the settings put them (Redis in CI). A web write with RabbitMQ down is
tests/system/test_worker.py's `test_a_write_answers_quickly_when_the_broker_is_unreachable`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from app import create_app
from tests.support.backends import test_config
from tests.support.rabbitmq import (
    RABBITMQ_URL,
    declares_as,
    delete_queues,
    message_count,
    needs_rabbitmq,
    own_queues,
)
from tests.support.workers import (
    Worker,
    broker_settings,
    sigterm_mid_task,
    sleep_marks,
    wait_for,
)

pytestmark = [needs_rabbitmq, pytest.mark.slow]


@pytest.fixture
def rabbit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """Settings for a producer app and its workers: RabbitMQ, this test's queues, the results
    where the settings resolve them."""
    assert RABBITMQ_URL is not None
    settings = {
        **broker_settings(tmp_path),
        "CELERY_BROKER_URL": RABBITMQ_URL,
        **own_queues(),
    }
    # Celery prefers these variables to its configuration: the in-process producer must see ours.
    monkeypatch.setenv("CELERY_BROKER_URL", settings["CELERY_BROKER_URL"])
    monkeypatch.setenv("CELERY_RESULT_BACKEND", settings["CELERY_RESULT_BACKEND"])
    try:
        yield settings
    finally:
        delete_queues(RABBITMQ_URL, *(settings[name] for name in own_queues()))


def _celery(database_uri: str, settings: dict[str, str]) -> Any:
    from worker import make_celery

    return make_celery(create_app(test_config(database_uri, **settings)))


def test_every_queue_is_a_quorum_queue_and_every_publish_is_confirmed(
    app: Flask, database_uri: str, tmp_path: Path, rabbit: dict[str, str]
) -> None:
    celery = _celery(database_uri, rabbit)
    assert celery.conf.broker_transport_options["confirm_publish"] is True
    assert celery.conf.task_default_queue_type == "quorum"
    assert celery.conf.task_acks_late
    assert celery.conf.task_reject_on_worker_lost
    default, feed, webhooks = (rabbit[name] for name in own_queues())
    routed = {
        name: celery.amqp.router.route({}, task)["queue"]
        for name, task in (
            (default, "worker.ping"),
            (feed, "events.feed"),
            (webhooks, "webhooks.x"),
        )
    }
    for name, queue in routed.items():
        assert queue.name == name
        assert queue.queue_arguments == {"x-queue-type": "quorum"}, name
        assert queue.exchange.type == "topic", "native delayed delivery needs topic exchanges"

    # A worker consuming all three declares them; RabbitMQ itself says they are quorum queues.
    worker = Worker(app, tmp_path, rabbit, **rabbit).start("--pool=solo", "-Q", ",".join(routed))
    try:
        for name in routed:
            assert message_count(RABBITMQ_URL or "", name) == 0, f"{name} was not declared"
            assert declares_as(RABBITMQ_URL or "", name, "quorum"), name
            assert not declares_as(RABBITMQ_URL or "", name, "classic"), name
        assert "Global QoS is disabled" in worker.log()  # quorum queues: per-consumer prefetch

        # A publish goes through a channel in confirm mode, and the task runs.
        with celery.producer_or_acquire() as producer:
            result = celery.send_task("worker.ping", producer=producer)
            assert producer.channel._confirm_selected, "the channel is in confirm mode"
        assert result.get(timeout=30)["status"] == "pong"
        # A countdown on a quorum queue goes through RabbitMQ's delayed exchanges, not a
        # worker's memory.
        started = time.monotonic()
        delayed = celery.send_task("worker.ping", countdown=2)
        assert delayed.get(timeout=30)["status"] == "pong"
        assert time.monotonic() - started >= 1.5
    finally:
        worker.stop()


def test_a_task_whose_worker_is_killed_is_redone_once_and_completes_once(
    app: Flask, database_uri: str, tmp_path: Path, rabbit: dict[str, str]
) -> None:
    queue = rabbit["CELERY_DEFAULT_QUEUE"]
    options = ("--pool=prefork", "--concurrency=1", "-Q", queue)
    celery = _celery(database_uri, rabbit)
    worker_a = Worker(app, tmp_path, rabbit, **rabbit).start(*options)
    worker_b = Worker(app, tmp_path, rabbit, **rabbit)
    try:
        token = uuid.uuid4().hex
        result = celery.send_task("worker.sleep", args=[3, token], queue=queue)
        wait_for(
            "worker A to receive and start the task",
            lambda: f"[{result.id}] received" in worker_a.log() and sleep_marks(token)[0] == 1,
            timeout=20,
        )
        worker_a.kill9()
        assert sleep_marks(token) == (1, None), "A died before completing it"

        # RabbitMQ returns an unacknowledged message as soon as its consumer's connection
        # drops: no visibility timeout to wait for.
        killed = time.monotonic()
        worker_b.start(*options)
        outcome = result.get(timeout=30)
        assert time.monotonic() - killed < 30
        assert outcome == {"token": token, "run": 2, "first": True, "done_by": worker_b.nodename}
        assert sleep_marks(token) == (2, worker_b.nodename)
        time.sleep(1.5)  # and it is not delivered a third time
        assert sleep_marks(token) == (2, worker_b.nodename)
        assert f"[{result.id}] succeeded" in worker_b.log()
        assert message_count(RABBITMQ_URL or "", queue) == 0
    finally:
        worker_a.stop()
        worker_b.stop()


def test_sigterm_mid_task_finishes_it_exits_zero_and_loses_nothing(
    app: Flask, database_uri: str, tmp_path: Path, rabbit: dict[str, str]
) -> None:
    queue = rabbit["CELERY_DEFAULT_QUEUE"]
    options = ("--pool=prefork", "--concurrency=1", "-Q", queue)
    celery = _celery(database_uri, rabbit)
    worker = Worker(app, tmp_path, rabbit, **rabbit).start(*options)
    second = Worker(app, tmp_path, rabbit, **rabbit)
    try:
        sigterm_mid_task(celery, worker, second, queue, options)
        # Acknowledged, not returned: the queue is empty.
        assert message_count(RABBITMQ_URL or "", queue) == 0
    finally:
        worker.stop()
        second.stop()
