"""`flask webhooks list | deliveries | retry | disable`: operators' view of webhooks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

if TYPE_CHECKING:
    from app.webhooks.service import WebhookService

# What the commands use is imported when they run: `flask --help` lists them without loading it.

STATUSES = ("pending", "delivered", "dead")  # app/webhooks/models.py DELIVERY_STATUSES


def service() -> WebhookService:
    from app.webhooks.service import WebhookService

    return WebhookService.from_app()


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A refusal of the service (no such webhook, not dead, ...) as one line, exit 1."""
    from app.core.errors import AppError

    try:
        yield
    except AppError as error:
        raise click.ClickException(error.message) from None


def _when(value: object) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else "-"


@click.group("webhooks", help="Inspect webhooks and their deliveries; retry, disable.")
def webhooks_cli() -> None:
    """Inspect webhooks and their deliveries; retry, disable."""


@webhooks_cli.command("list")
@click.option("--owner", metavar="EMAIL", default=None, help="Only this user's webhooks.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True)
@with_appcontext
def list_command(owner: str | None, limit: int) -> None:
    """Live webhooks, newest first: id, state, owner, events, URL."""
    with one_line_errors():
        found = service().listed(owner_email=owner, limit=limit)
    for webhook, email in found:
        state = "active" if webhook.active else "disabled"
        reason = f"  ({webhook.disabled_reason})" if webhook.disabled_reason else ""
        events = ",".join(webhook.events)
        click.echo(f"{webhook.public_id}  {state}  {email}  {events}  {webhook.url}{reason}")
    click.echo(f"{len(found)} webhook(s)", err=True)


@webhooks_cli.command("deliveries")
@click.argument("webhook_id", type=click.UUID)
@click.option("--status", type=click.Choice(STATUSES), default=None, help="Only this status.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@with_appcontext
def deliveries_command(webhook_id: uuid.UUID, status: str | None, limit: int) -> None:
    """A webhook's newest deliveries, each with its attempts."""
    with one_line_errors():
        found = service().deliveries_of(webhook_id, status=status, limit=limit)
    for delivery, attempts in found:
        click.echo(
            f"{delivery.public_id}  {delivery.status}  {delivery.event_type}"
            f"  attempts {delivery.attempts}  last {delivery.last_status_code or '-'}"
            f"  created {_when(delivery.created_at)}  next {_when(delivery.next_attempt_at)}"
            + (f"  error {delivery.last_error}" if delivery.last_error else "")
        )
        for attempt in attempts:
            click.echo(
                f"    #{attempt.attempt}  {_when(attempt.started_at)}  {attempt.duration_ms} ms"
                f"  {attempt.status_code or '-'}  {attempt.error or ''}".rstrip()
            )
    click.echo(f"{len(found)} deliveries", err=True)


@webhooks_cli.command("retry")
@click.argument("webhook_id", type=click.UUID)
@click.argument("delivery_id", type=click.UUID, required=False)
@click.option("--all-dead", is_flag=True, help="Every dead delivery of the webhook.")
@with_appcontext
def retry_command(webhook_id: uuid.UUID, delivery_id: uuid.UUID | None, all_dead: bool) -> None:
    """Send a dead delivery again (or, with --all-dead, every dead one) with a fresh attempt
    budget."""
    if (delivery_id is None) == (not all_dead):
        raise click.UsageError("give either DELIVERY_ID or --all-dead")
    with one_line_errors():
        retried, published = service().retry_as_operator(webhook_id, delivery_id)
    if not retried:
        click.echo(f"no dead deliveries of webhook {webhook_id}")
        return
    drain = "drain published" if published else "drain not published (tasks off or broker down)"
    click.echo(f"retrying {retried} deliveries of webhook {webhook_id}; {drain}")


@webhooks_cli.command("disable")
@click.argument("webhook_id", type=click.UUID)
@click.option("--reason", default=None, help="Shown to its owner as disabled_reason.")
@with_appcontext
def disable_command(webhook_id: uuid.UUID, reason: str | None) -> None:
    """Stop a webhook's deliveries (its owner may activate it again)."""
    with one_line_errors():
        webhook = service().disable(webhook_id, reason=reason)
    click.echo(f"disabled webhook {webhook.public_id}" + (f": {reason}" if reason else ""))
