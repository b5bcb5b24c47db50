"""The parallel test run's isolation (tests/support/parallel.py): each xdist worker gets a database
and a Redis db number of its own, derived from the environment CI and developers give, and never
more workers than Redis db numbers to give them."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.parallel import (
    ISOLATED,
    limit_workers,
    redis_dbs,
    worker_database_url,
    worker_environment,
)

PG = "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postboard_ci_123"
CI = {
    "DATABASE_URL": PG,
    "REDIS_URL": "redis://127.0.0.1:6379/13",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/14",
    "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/14",
}


def test_ci_s_two_redis_dbs_give_two_workers_one_db_each_for_everything() -> None:
    assert redis_dbs(CI) == [13, 14]
    first, second = worker_environment(CI, "gw0"), worker_environment(CI, "gw1")
    assert first == {
        ISOLATED: "gw0",
        "DATABASE_URL": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/postboard_ci_123_gw0",
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "CELERY_BROKER_URL": "redis://127.0.0.1:6379/13",
        "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6379/13",
    }
    assert second["DATABASE_URL"].endswith("/postboard_ci_123_gw1")
    assert {second[name] for name in ("REDIS_URL", "CELERY_BROKER_URL")} == {
        "redis://127.0.0.1:6379/14"
    }


def test_test_redis_dbs_names_more_numbers_and_a_worker_beyond_them_is_refused() -> None:
    env = {**CI, "TEST_REDIS_DBS": "9, 10,11 12"}
    assert redis_dbs(env) == [9, 10, 11, 12]
    assert worker_environment(env, "gw3")["CELERY_BROKER_URL"] == "redis://127.0.0.1:6379/12"
    with pytest.raises(pytest.UsageError, match="no Redis db number for worker gw4"):
        worker_environment(env, "gw4")


def test_the_embedded_default_changes_nothing_but_the_marker() -> None:
    assert redis_dbs({"TEST_REDIS_DBS": "9,10"}) == []  # no Redis named: none used
    assert worker_environment({}, "gw1") == {ISOLATED: "gw1"}


def test_a_redis_url_without_a_db_number_is_db_0_and_keeps_its_options() -> None:
    env = {"REDIS_URL": "rediss://:secret@cache.example:6380?ssl_cert_reqs=none"}
    assert redis_dbs(env) == [0]
    assert worker_environment(env, "gw0")["REDIS_URL"] == (
        "rediss://:secret@cache.example:6380/0?ssl_cert_reqs=none"
    )


def test_a_sqlite_database_url_gets_a_file_per_worker() -> None:
    assert worker_database_url("sqlite:////tmp/x/test.sqlite3", "gw1") == (
        "sqlite:////tmp/x/test_gw1.sqlite3"
    )


def _config(workers: int) -> Any:
    return SimpleNamespace(option=SimpleNamespace(tx=["popen"] * workers))


def test_no_more_workers_than_redis_dbs() -> None:
    config = _config(4)
    said = limit_workers(config, CI, worker=None)  # as the controller (this may be a worker)
    assert config.option.tx == ["popen", "popen"]
    assert said is not None
    assert "4 workers asked for, 2 run" in said
    assert "TEST_REDIS_DBS" in said
    embedded = _config(4)
    assert limit_workers(embedded, {}, worker=None) is None
    assert len(embedded.option.tx) == 4


def test_on_a_rabbitmq_broker_each_worker_has_queues_of_its_own() -> None:
    env = {
        **CI,
        "CELERY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/ci",
        "OUTBOX_QUEUE": "feed",
    }
    first, second = worker_environment(env, "gw0"), worker_environment(env, "gw1")
    assert "CELERY_BROKER_URL" not in first  # one vhost for all
    assert (first["CELERY_DEFAULT_QUEUE"], first["OUTBOX_QUEUE"], first["WEBHOOKS_QUEUE"]) == (
        "celery-gw0",
        "feed-gw0",
        "webhooks-gw0",
    )
    assert second["CELERY_DEFAULT_QUEUE"] == "celery-gw1"
    assert "CELERY_DEFAULT_QUEUE" not in worker_environment(CI, "gw0")  # Redis: a db each
