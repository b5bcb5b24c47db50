"""celery_config per broker (docs/brokers.md): RabbitMQ gets quorum queues behind topic exchanges,
publisher confirms and a fail-fast publisher; Redis and the embedded broker are left as they were;
beat uses redbeat whenever Redis is configured, with a tick and lock sized to the shortest period.
(The brokers themselves: tests/system/test_rabbitmq.py and test_beats.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from app.core.tasks import BEAT_KEY_PREFIX, beat_timing, celery_config
from app.settings import Settings


@pytest.fixture(autouse=True)
def _no_servers_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "CELERY_DEFAULT_QUEUE"):
        monkeypatch.delenv(name, raising=False)


def config(role: str = "web", **overrides: Any) -> dict[str, Any]:
    flask_config = Settings.from_env("testing", **overrides).to_flask_config()
    return celery_config(flask_config, role=role)


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:5672/postboard",
        "amqps://u:p@rabbit.example:5671/postboard",
        "pyamqp://guest:guest@127.0.0.1//",
    ],
)
@pytest.mark.parametrize("role", ["web", "worker"])
def test_rabbitmq_queues_are_quorum_queues_and_publishes_are_confirmed(url: str, role: str) -> None:
    settings = config(role, CELERY_BROKER_URL=url, CELERY_DEFAULT_QUEUE="tasks")
    queues = {queue.name: queue for queue in settings["task_queues"]}
    assert set(queues) == {"tasks", "events"}
    for queue in queues.values():
        assert queue.queue_arguments == {"x-queue-type": "quorum"}
        assert queue.exchange.type == "topic"
    assert settings["task_default_queue"] == "tasks"
    assert settings["task_default_queue_type"] == "quorum"
    assert settings["task_create_missing_queue_type"] == "quorum"  # webhooks, and any -Q
    assert settings["worker_detect_quorum_queues"] is True
    assert settings["broker_transport_options"]["confirm_publish"] is True
    assert settings["task_acks_late"] is True
    assert settings["task_reject_on_worker_lost"] is True


def test_a_rabbitmq_publisher_fails_fast_and_a_worker_keeps_its_heartbeat() -> None:
    url = "amqp://guest:guest@127.0.0.1:5672/postboard"
    web = config("web", CELERY_BROKER_URL=url)
    assert web["broker_heartbeat"] == 0
    assert web["broker_connection_timeout"] <= 2
    assert web["broker_transport_options"]["max_retries"] == 1
    worker = config("worker", CELERY_BROKER_URL=url)
    assert "broker_heartbeat" not in worker  # Celery's default, serviced by the worker
    assert "max_retries" not in worker["broker_transport_options"]  # a worker keeps retrying


@pytest.mark.parametrize(
    "overrides",
    [
        {"CELERY_BROKER_URL": "redis://127.0.0.1:6379/1", "REDIS_URL": "redis://127.0.0.1:6379/0"},
        {},  # the embedded SQLite broker
    ],
    ids=["redis", "embedded"],
)
def test_other_brokers_get_classic_queues_on_direct_exchanges_as_before(overrides: dict) -> None:
    settings = config("worker", **overrides)
    for queue in settings["task_queues"]:
        assert not queue.queue_arguments
        assert queue.exchange.type == "direct"
    assert "task_default_queue_type" not in settings
    assert "confirm_publish" not in settings["broker_transport_options"]


def test_beat_uses_redbeat_under_our_prefix_with_redis_and_the_file_scheduler_without() -> None:
    with_redis = config("worker", REDIS_URL="redis://127.0.0.1:6379/5")
    assert with_redis["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert with_redis["redbeat_redis_url"] == "redis://127.0.0.1:6379/5"  # never the broker's
    assert with_redis["redbeat_key_prefix"] == BEAT_KEY_PREFIX
    assert config("worker")["beat_scheduler"] == "celery.beat:PersistentScheduler"


def test_the_beat_lock_outlasts_three_ticks_of_half_the_shortest_period() -> None:
    # The default schedule: the webhooks sweep every 5 s is the shortest.
    assert beat_timing([3600, 60, 5, 600]) == {
        "beat_max_loop_interval": 2.5,
        "redbeat_lock_timeout": 8,
    }
    assert beat_timing([3]) == {"beat_max_loop_interval": 1.5, "redbeat_lock_timeout": 5}
    assert beat_timing([0.5]) == {"beat_max_loop_interval": 1.0, "redbeat_lock_timeout": 3}
    assert beat_timing([86400]) == {"beat_max_loop_interval": 30.0, "redbeat_lock_timeout": 90}
