"""Delivering a webhook's pending deliveries: the drain (one target at a time, in order).

`drain(webhook_public_id)` (the `webhooks.drain` task calls it):

1. takes the target's lease (Redis `SET NX PX`, or the host's disk cache): one drain per target
   at a time, so its deliveries go out one by one in order; a second drain returns at once;
2. skips while the target's breaker is open (its deliveries wait: no attempt is spent) and says
   when to come back;
3. sends the target's first pending delivery (event-log order: commit order per aggregate) if it
   is due, records the attempt; 2xx -> delivered, and on to the next; else attempts + 1 and the
   next try after an exponential backoff with full jitter, and the drain stops there (head of
   line: what follows waits, which keeps each aggregate's order); at the last attempt the
   delivery is dead-lettered and the drain goes on with the next one;
4. stops after DRAIN_BUDGET_SECONDS and asks to be run again, so no target holds a worker.

The HTTP call runs outside any database transaction.
"""

from __future__ import annotations

import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pybreaker
from flask import current_app

from app.core import outbound
from app.core.feed import processed
from app.core.leases import new_owner
from app.core.metrics import WEBHOOK_DELIVERIES
from app.core.ssrf import Resolver
from app.extensions import db
from app.webhooks import dispatch_repository as repo
from app.webhooks import signing
from app.webhooks.breakers import breakers
from app.webhooks.drain_lease import drain_leases, lease_name
from app.webhooks.fanout import fan_out
from app.webhooks.models import DEAD, DELIVERED, PENDING, Webhook
from app.webhooks.policy import WebhookPolicy

log = logging.getLogger(__name__)

DRAIN_BUDGET_SECONDS = 30.0  # then the drain re-queues itself: other targets get the thread
# An event's predecessor in its aggregate that has no delivery yet is waited for (its feed batch
# is being fanned out) if it is younger than this; older, it is taken as never coming.
ORDER_WAIT_SECONDS = 120.0
ORDER_RECHECK_SECONDS = 1.0
PAGE = 50  # pending deliveries read at a time, in order
RENEW_EVERY_SECONDS = 5.0  # the lease is renewed this often while a drain runs


class TargetFailed(Exception):
    """A non-2xx answer, a timeout or a connection error: a failure for the breaker."""


@dataclass
class Drained:
    """What one drain did, and when to run it again (None: nothing left to do for now)."""

    delivered: int = 0
    failed: int = 0
    dead: int = 0
    skipped_open: bool = False
    busy: bool = False  # another drain holds the target
    again_in: float | None = None
    attempts: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "delivered": self.delivered,
            "failed": self.failed,
            "dead": self.dead,
            "skipped_open": self.skipped_open,
            "busy": self.busy,
            "again_in": self.again_in,
        }


def backoff_seconds(attempt: int, policy: WebhookPolicy, rng: random.Random | None = None) -> float:
    """Full jitter: uniform in [0, min(max, base * 2^(attempt - 1))]."""
    ceiling = min(policy.backoff_max_seconds, policy.backoff_base_seconds * 2 ** (attempt - 1))
    return (rng or _rng).uniform(0, ceiling)


_rng = random.SystemRandom()


def drain(
    webhook_public_id: uuid.UUID,
    *,
    resolve: Resolver = socket.getaddrinfo,
    budget_seconds: float = DRAIN_BUDGET_SECONDS,
    outbound_policy: outbound.Policy | None = None,
) -> Drained:
    """Deliver what is due for one webhook, in order, under its lease (see the module doc)."""
    policy = WebhookPolicy.from_config(current_app.config)
    call_policy = outbound_policy or outbound.Policy(
        timeout=policy.timeout_seconds,
        max_response_bytes=policy.max_response_bytes,
        allow_http=policy.allow_http,
        allow_private=policy.allow_private,
    )
    leases = drain_leases()
    lease, owner = lease_name(webhook_public_id), new_owner()
    hold = budget_seconds + policy.timeout_seconds + 30  # outlives one whole drain
    if not leases.acquire(lease, owner, hold):
        return Drained(busy=True)
    result = Drained()
    try:
        _drain_held(
            webhook_public_id,
            policy,
            call_policy,
            resolve,
            budget_seconds,
            result,
            renew=lambda: leases.renew(lease, owner, hold),
        )
    finally:
        leases.release(lease, owner)
    try:
        if result.again_in is None and _due_now(webhook_public_id):
            # A delivery recorded while we held the lease, whose own drain found it held.
            result.again_in = 0.0
    finally:
        db.session.remove()
    return result


def _due_now(public_id: uuid.UUID) -> bool:
    session = db.session()
    try:
        return repo.has_due(session, public_id, datetime.now(UTC))
    finally:
        session.rollback()


def _predecessor_in_flight(session: Any, target: _Target, head: repo.Head, now: datetime) -> bool:
    """Whether the event before `head`'s in its aggregate is one this target may get, with no
    delivery recorded, and fan-out has not finished it yet: two feed messages were consumed
    at once and the earlier one is still being fanned out. Wait for it (order per aggregate).
    Finished without a delivery (the webhook was disabled then, or did not want it): go on."""
    previous = repo.unrecorded_predecessor(
        session,
        target.id,
        created_at=target.created_at,
        events=target.events,
        head=head,
        since=now - timedelta(seconds=ORDER_WAIT_SECONDS),
    )
    return previous is not None and not processed(fan_out, [str(previous)])[0]


@dataclass(frozen=True)
class _Target:
    """What a drain needs of its webhook, read once when it starts (a webhook disabled or
    deleted meanwhile gets at most one drain's worth, DRAIN_BUDGET_SECONDS, more)."""

    id: int
    url: str
    secret: str
    created_at: datetime
    events: tuple[str, ...]


def _drain_held(
    public_id: uuid.UUID,
    policy: WebhookPolicy,
    call_policy: outbound.Policy,
    resolve: Resolver,
    budget_seconds: float,
    result: Drained,
    *,
    renew: Callable[[], bool],
) -> None:
    session = db.session()
    started = renewed = time.monotonic()
    key = str(public_id)
    shared = breakers()
    webhook = repo.webhook_for_drain(session, public_id)
    if webhook is None:
        session.rollback()
        return
    target = _Target(
        webhook.id, webhook.url, webhook.secret, webhook.created_at, tuple(webhook.events or ())
    )
    # (aggregate, version) sent or dead-lettered by this drain: their successors need no check.
    handled: set[tuple[uuid.UUID | None, int | None]] = set()
    while True:
        heads = repo.pending_page(session, target.id, limit=PAGE)
        if not heads:
            session.rollback()
            return
        for head in heads:
            if (wait := shared.wait_seconds(key)) > 0:
                result.skipped_open = True
                result.again_in = wait
                WEBHOOK_DELIVERIES.labels(outcome="skipped_open").inc()
                session.rollback()
                return
            now = datetime.now(UTC)
            if head.next_attempt_at is not None and head.next_attempt_at > now:
                result.again_in = (head.next_attempt_at - now).total_seconds()
                session.rollback()
                return  # head of line: nothing after it goes first
            previous = (head.aggregate_id, head.version - 1 if head.version else None)
            if previous not in handled and _predecessor_in_flight(session, target, head, now):
                result.again_in = ORDER_RECHECK_SECONDS
                session.rollback()
                return
            if time.monotonic() - started >= budget_seconds:
                result.again_in = 0.0
                session.rollback()
                return
            session.rollback()  # no transaction (nor pooled connection) held over the HTTP call
            status = _attempt(head, target, key, policy, call_policy, resolve, result)
            if status == PENDING:
                return  # head of line: what follows waits for this one's next try
            handled.add((head.aggregate_id, head.version))
            if time.monotonic() - renewed >= RENEW_EVERY_SECONDS:
                if not renew():
                    return  # the lease ran out under us: whoever holds it now carries on
                renewed = time.monotonic()
        if len(heads) < PAGE:
            session.rollback()
            return  # that was all (what arrived since, the look after the lease finds)


def _attempt(
    head: repo.Head,
    target: _Target,
    key: str,
    policy: WebhookPolicy,
    call_policy: outbound.Policy,
    resolve: Resolver,
    result: Drained,
) -> str:
    """One attempt of `head`: sent through the target's breaker, recorded; its new status."""
    breaker = breakers().breaker(key)
    started_at = datetime.now(UTC)
    headers = signing.headers(target.secret, str(head.public_id), head.payload, now=time.time())
    outcome = _send(breaker, target.url, head.payload.encode(), headers, call_policy, resolve)
    if outcome is None:  # the breaker was open (it opened a moment ago): no attempt was made
        result.skipped_open = True
        result.again_in = breakers().wait_seconds(key) or 0.0
        WEBHOOK_DELIVERIES.labels(outcome="skipped_open").inc()
        return PENDING
    attempt = head.attempts + 1
    finished = datetime.now(UTC)
    if outcome.ok:
        status, next_at = DELIVERED, None
    elif attempt >= policy.max_attempts:
        status, next_at = DEAD, None
    else:
        status, next_at = PENDING, finished + timedelta(seconds=backoff_seconds(attempt, policy))
    session = db.session()
    repo.record_attempt(
        session,
        repo.AttemptRecord(
            delivery_id=head.id,
            attempt=attempt,
            started_at=started_at,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            status=status,
            next_attempt_at=next_at,
            finished_at=finished,
        ),
    )
    session.commit()
    label = {DELIVERED: "delivered", DEAD: "dead", PENDING: "failed"}[status]
    WEBHOOK_DELIVERIES.labels(outcome=label).inc()
    setattr(result, label, getattr(result, label) + 1)
    if status == PENDING:
        result.again_in = max(0.0, (next_at - finished).total_seconds()) if next_at else 0.0
        # The breaker may have opened on this failure: come back when it lets a probe through.
        result.again_in = max(result.again_in, breakers().wait_seconds(key))
    if status != DELIVERED:
        log.info(
            "webhook_attempt_failed",
            extra={
                "webhook": key,
                "delivery": str(head.public_id),
                "attempt": attempt,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "dead": status == DEAD,
            },
        )
    return status


def _send(
    breaker: pybreaker.CircuitBreaker,
    url: str,
    body: bytes,
    headers: dict[str, str],
    call_policy: outbound.Policy,
    resolve: Resolver,
) -> outbound.Outcome | None:
    """POST through the breaker (a failure counts against it); None when it let nothing out."""
    sent: list[outbound.Outcome] = []
    try:
        with breaker.calling():
            sent.append(outbound.post(url, body, headers, call_policy, resolve=resolve))
            if not sent[0].ok:
                raise TargetFailed(sent[0].error or f"HTTP {sent[0].status_code}")
    except (pybreaker.CircuitBreakerError, TargetFailed):
        pass  # recorded by the caller; the breaker has counted it
    return sent[0] if sent else None


def due_targets(limit: int = 1000) -> list[uuid.UUID]:
    """Webhooks with a pending delivery due now, not being drained and not behind an open
    breaker: what the sweep enqueues drains for (lost messages, retries whose time came)."""
    session = db.session()
    try:
        found = repo.due_webhooks(session, datetime.now(UTC), limit=limit)
    finally:
        session.rollback()
    leases = drain_leases()
    shared = breakers()
    return [
        public_id
        for public_id in found
        if not leases.held(lease_name(public_id)) and shared.wait_seconds(str(public_id)) <= 0
    ]


__all__ = ["Drained", "Webhook", "backoff_seconds", "drain", "due_targets"]
