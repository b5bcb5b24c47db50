"""RabbitMQ for the broker drills: the server RABBITMQ_URL names (CI's server phase makes a vhost
of its own and exports it), queue names of one test's own (so parallel workers and earlier runs
never share a queue), and what the broker itself says about a queue."""

from __future__ import annotations

import contextlib
import os
import uuid

import pytest

RABBITMQ_URL = os.environ.get("RABBITMQ_URL") or None


def rabbitmq_answers(url: str | None = RABBITMQ_URL) -> bool:
    if not url:
        return False
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:
        return False


def skip_reason() -> str | None:
    if not RABBITMQ_URL:
        return "needs RabbitMQ: set RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5672/<vhost>"
    if not rabbitmq_answers():
        return f"no RabbitMQ answers at RABBITMQ_URL ({RABBITMQ_URL.rsplit('@', 1)[-1]})"
    return None


_REASON = skip_reason()
needs_rabbitmq = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def own_queues() -> dict[str, str]:
    """Settings naming a default, feed and webhooks queue of this test's own."""
    stem = f"pbtest-{uuid.uuid4().hex[:10]}"
    return {
        "CELERY_DEFAULT_QUEUE": f"{stem}-celery",
        "OUTBOX_QUEUE": f"{stem}-events",
        "WEBHOOKS_QUEUE": f"{stem}-webhooks",
    }


def message_count(url: str, queue: str) -> int | None:
    """Messages ready in `queue` (a passive declare), None when it does not exist."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        try:
            return int(conn.default_channel.queue_declare(queue, passive=True).message_count)
        except Exception:
            return None


def declares_as(url: str, queue: str, queue_type: str) -> bool:
    """Whether declaring `queue` with `x-queue-type: queue_type` is accepted: RabbitMQ refuses
    (406 PRECONDITION_FAILED) a declaration whose type differs from the existing queue's."""
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        try:
            channel.queue_declare(
                queue, durable=True, auto_delete=False, arguments={"x-queue-type": queue_type}
            )
            return True
        except PreconditionFailed:
            return False
        finally:
            with contextlib.suppress(Exception):
                channel.close()


def delete_queues(url: str, *queues: str) -> None:
    """Remove a test's queues and the exchanges of the same names."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        for name in queues:
            for delete in ("queue_delete", "exchange_delete"):
                channel = conn.channel()  # a refused call closes its channel: one each
                with contextlib.suppress(Exception):
                    getattr(channel, delete)(name)
                with contextlib.suppress(Exception):
                    channel.close()
