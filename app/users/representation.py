"""The user's one JSON representation: what the cache holds and every response serves (the
marshmallow UserSchema only documents it)."""

from __future__ import annotations

from typing import Any

from app.users.models import User


def public_user(user: User) -> dict[str, Any]:
    """Every field anyone may see, JSON-ready, in the documented order (no email)."""
    return {
        "id": str(user.public_id),
        "username": user.username,
        "display_name": user.display_name,
        "bio": user.bio,
        "created_at": user.created_at.isoformat(),
        "updated_at": user.updated_at.isoformat(),
        "version": user.version,
    }


def with_email(public: dict[str, Any], email: str) -> dict[str, Any]:
    """The private representation: the public one with the email after the bio."""
    out: dict[str, Any] = {}
    for key, value in public.items():
        out[key] = value
        if key == "bio":
            out["email"] = email
    return out


def private_user(user: User) -> dict[str, Any]:
    """What the user themself and admins see."""
    return with_email(public_user(user), user.email)


def private_user_from_state(public_id: str, version: int, state: dict[str, Any]) -> dict[str, Any]:
    """The private representation of a user rebuilt from their events' folded state
    (app/core/history.py): the same fields, values and order as `private_user` of the row."""
    public = {
        "id": public_id,
        "username": state["username"],
        "display_name": state["display_name"],
        "bio": state["bio"],
        "created_at": state["created_at"],
        "updated_at": state["updated_at"],
        "version": version,
    }
    return with_email(public, state["email"])
