"""The scale-out drill (issue #19, contract §10): two gunicorn instances, two Celery workers and
two beats on one PostgreSQL, Redis and RabbitMQ, under load for 60 s. Every shared guarantee
holds across them: the rate limit, cache coherence, token revocation, idempotency keys, each
periodic task once per period, and no task lost when a worker is killed.

Its figures (per-instance throughput, the shared servers' load) are reported by
`python -m bench.scale_out`; the same drill runs there (tests/support/scale_out.py).
"""

from __future__ import annotations

import itertools
import os
from collections import Counter

import pytest

from tests.support.backends import DATABASE_URL, ON_POSTGRES, REDIS_URL
from tests.support.outbox import rabbitmq_reachable
from tests.support.scale_out import (
    ANONYMOUS_LIMIT,
    LIMIT_PROBES,
    PERIODS,
    run_drill,
    running_topology,
)
from tests.support.topology import RABBITMQCTL

RABBITMQ_URL = os.environ.get("RABBITMQ_URL", "")

pytestmark = [
    pytest.mark.slow,
    # A minute of load on both cores: run alone (make test's serial part), never beside others.
    pytest.mark.serial,
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.skipif(not ON_POSTGRES, reason="the drill shares a real PostgreSQL"),
    pytest.mark.skipif(not REDIS_URL, reason="the drill shares a real Redis (REDIS_URL)"),
    pytest.mark.skipif(
        not RABBITMQ_URL or not rabbitmq_reachable(),
        reason="the drill's broker is RabbitMQ: set RABBITMQ_URL to a reachable one",
    ),
    pytest.mark.skipif(not RABBITMQCTL, reason="rabbitmqctl makes the drill's own vhost"),
]


def test_two_instances_two_workers_two_beats_share_every_guarantee(tmp_path) -> None:
    with running_topology(DATABASE_URL, REDIS_URL, RABBITMQ_URL, tmp_path) as (topology, send):
        record = run_drill(topology, send, seconds=60)
        logs = {f"{p.role} {i}": p.log()[-1500:] for i, p in enumerate(topology.processes)}

    print(f"\nscale-out drill: {record.seconds:.0f} s, requests/s by instance:")
    print({i: round(record.rps(i), 1) for i in sorted(record.requests)})
    print("CPU, share of one core:", {k: round(v, 2) for k, v in sorted(record.cpu.items())})
    print("periodic runs:", {name: len(runs) for name, runs in record.periodic.items()})
    print("sleep tasks: held by the killed worker", record.killed_worker_held, record.task_runs)

    assert not record.errors, record.errors[:10]
    # Both instances served real load.
    assert all(record.requests.get(i, 0) > 100 for i in (0, 1)), record.requests

    # Cache coherence: a read through one instance right after a write through the other.
    assert record.checked_reads > 100
    assert not record.stale_reads, record.stale_reads[:10]

    # The shared limit holds at its number, whichever instance answered.
    statuses = Counter(record.limit_statuses)
    assert statuses == {200: ANONYMOUS_LIMIT, 429: LIMIT_PROBES - ANONYMOUS_LIMIT}, statuses

    # The killed worker held tasks; every one was done, by a redelivery where it had to be.
    assert record.killed_worker_held >= 1, (
        "the kill found nothing in flight: the drill proved nothing"
    )
    assert not record.lost_tasks, (record.lost_tasks, logs)
    assert all(runs >= 1 for runs in record.task_runs.values()), record.task_runs
    assert sum(runs > 1 for runs in record.task_runs.values()) >= 1, record.task_runs

    # Two beats, and each periodic task was sent once per period, and ran.
    start, end = record.beats_window
    for name, (_, period) in PERIODS.items():
        runs = [when for when in record.periodic[name] if start <= when <= end]
        expected = (end - start) / period
        assert expected - 2 <= len(runs) <= expected + 1.5, (name, len(runs), expected, logs)
        gaps = [b - a for a, b in itertools.pairwise(runs)]
        assert min(gaps) > period / 2, (name, gaps)
        # Every send reached a worker (the last may still be on its way).
        sent = len(record.periodic[name])
        assert sent - 1 <= record.periodic_received[name] <= sent, (name, record.periodic_received)

    # Revocation and idempotency keys hold across instances.
    assert record.revoked_token_status == 401
    assert len(set(record.idempotent_ids)) == 1, record.idempotent_ids
