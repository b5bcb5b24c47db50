"""`flask oauth clients list | create | delete`: operators' view of third-party apps."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click
from flask.cli import with_appcontext

if TYPE_CHECKING:
    from app.oauth.service import OAuthService

# What the commands use is imported when they run: `flask --help` lists them without loading it.
SCOPES = ("profile", "users:write", "posts:write", "drafts:read", "webhooks")  # USER_SCOPES


def service() -> OAuthService:
    from app.oauth.service import OAuthService

    return OAuthService.from_app()


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A refusal of the service (no such user or app, a bad redirect URI) as one line, exit 1."""
    from app.core.errors import AppError

    try:
        yield
    except AppError as error:
        reasons = "; ".join(f"{d['field']}: {d['message']}" for d in error.details)
        raise click.ClickException(reasons or error.message) from None


@click.group("oauth", help="Third-party apps (OAuth 2.0 clients).")
def oauth_cli() -> None:
    """Third-party apps (OAuth 2.0 clients)."""


@oauth_cli.group("clients", help="List, register and delete apps.")
def clients_cli() -> None:
    """List, register and delete apps."""


@clients_cli.command("list")
@with_appcontext
def list_command() -> None:
    """Every app, newest first: client id, kind, owner, name, scopes, redirect URIs."""
    oauth = service()
    found = oauth.clients()
    owners = oauth.owners(found)
    for c in found:
        kind = "confidential" if c.confidential else "public"
        owner = owners[c.owner_id].email if c.owner_id in owners else "-"
        click.echo(f"{c.client_id}  {kind}  {owner}  {c.name!r}  {','.join(c.scopes)}  "
                   f"{' '.join(c.redirect_uris)}")  # fmt: skip
    click.echo(f"{len(found)} app(s)", err=True)


@clients_cli.command("create")
@click.argument("name")
@click.option("--owner", metavar="EMAIL", required=True, help="The user who owns the app.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, required=True,
              help="A redirect URI (repeat for several).")  # fmt: skip
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="A scope the app may ask for (repeat for several).")  # fmt: skip
@click.option("--confidential", is_flag=True, help="A server-side app with a secret.")
@with_appcontext
def create_command(name: str, owner: str, redirect_uris: tuple[str, ...],
                   scopes: tuple[str, ...], confidential: bool) -> None:  # fmt: skip
    """Register an app; a confidential app's secret is printed once, here."""
    with one_line_errors():
        oauth = service()
        user = oauth.owner_by_email(owner)
        made = oauth.register(user.id, {"name": name, "redirect_uris": list(redirect_uris),
                              "scopes": list(scopes), "confidential": confidential})  # fmt: skip
    click.echo(f"client_id {made.client.client_id}")
    if made.client_secret is not None:
        click.echo(f"client_secret {made.client_secret}  (shown once: store it now)")


@clients_cli.command("delete")
@click.argument("client_id")
@with_appcontext
def delete_command(client_id: str) -> None:
    """Delete an app: every token it holds is refused from now on, in every process."""
    with one_line_errors():
        oauth = service()
        client = oauth.find(client_id)
        if client is None:
            raise click.ClickException(f"no app with the client id {client_id}")
        oauth.delete(client)
    click.echo(f"deleted {client_id}")
