"""`flask users create EMAIL --username NAME [--password P] [--admin]`."""

from __future__ import annotations

import click
from flask.cli import with_appcontext


@click.group("users", help="Manage users.")
def users_cli() -> None:
    """Manage users."""


@users_cli.command("create")
@click.argument("email")
@click.option("--username", required=True, help="Unique, 3-32 letters, digits, _ . -")
@click.option(
    "--password",
    prompt=True,
    hide_input=True,
    confirmation_prompt=True,
    help="Prompted for (hidden) when omitted.",
)
@click.option("--admin", is_flag=True, help="Give the user the admin scope.")
@with_appcontext
def create_user(email: str, username: str, password: str, admin: bool) -> None:
    """Create a user (optionally an admin)."""
    import marshmallow as ma

    from app.core.errors import AppError, flatten_messages
    from app.users.schemas import UserCreateSchema
    from app.users.service import UserService

    try:
        data = UserCreateSchema().load({"email": email, "username": username, "password": password})
    except ma.ValidationError as exc:
        reason = "; ".join(f"{d['field']}: {d['message']}" for d in flatten_messages(exc.messages))
        raise click.ClickException(reason) from None
    service = UserService.from_app()
    try:
        user = service.register({**data, "is_admin": admin})
    except AppError as exc:
        raise click.ClickException(exc.message) from None
    role = "admin" if admin else "user"
    click.echo(f"created {role} {user.username} <{user.email}> id={user.public_id}")
