"""Request and response shapes for users."""

from __future__ import annotations

from typing import Any

import marshmallow as ma
from marshmallow import validate as v

from app.core.schemas import EmailText, StrictSchema, Text, envelope_schema
from app.users.models import BIO_MAX, DISPLAY_NAME_MAX, EMAIL_MAX, USERNAME_MAX

USERNAME_RE = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
PASSWORD_MIN, PASSWORD_MAX = 8, 128


def _email(**kw: Any) -> EmailText:
    return EmailText(
        validate=v.Length(max=EMAIL_MAX),
        metadata={"example": "ada@example.com"},
        **kw,
    )


def _username(**kw: Any) -> Text:
    return Text(
        min_length=3,
        max_length=USERNAME_MAX,
        strip=False,  # the pattern already forbids white space: what is sent is what is stored
        validate=v.Regexp(USERNAME_RE, error="Use letters, digits, '_', '.' or '-'."),
        metadata={"example": "ada_l"},
        **kw,
    )


def _password(**kw: Any) -> Text:
    return Text(
        min_length=PASSWORD_MIN,
        max_length=PASSWORD_MAX,
        strip=False,
        check_format=False,
        load_only=True,
        metadata={"example": "correct horse battery"},
        **kw,
    )


def _display_name(**kw: Any) -> Text:
    return Text(max_length=DISPLAY_NAME_MAX, metadata={"example": "Ada Lovelace"}, **kw)


def _bio(**kw: Any) -> Text:
    return Text(multiline=True, max_length=BIO_MAX, metadata={"example": "Analyst."}, **kw)


class UserCreateSchema(StrictSchema):
    email = _email(required=True)
    username = _username(required=True)
    password = _password(required=True)
    display_name = _display_name()
    bio = _bio()


class UserPutSchema(StrictSchema):
    """PUT replaces the whole profile: every mutable field is required."""

    email = _email(required=True)
    username = _username(required=True)
    display_name = _display_name(required=True)
    bio = _bio(required=True)


class UserPatchSchema(StrictSchema):
    """PATCH changes some fields; a new password needs the current one (admins excepted)."""

    email = _email()
    username = _username()
    display_name = _display_name()
    bio = _bio()
    password = _password()
    current_password = Text(
        max_length=PASSWORD_MAX,
        strip=False,
        check_format=False,
        load_only=True,
        metadata={"example": "old secret"},
    )


class UserSchema(ma.Schema):
    """Documents app/users/representation.py's output (responses are not dumped through it)."""

    id = ma.fields.UUID(required=True)
    username = ma.fields.String(required=True)
    display_name = ma.fields.String(required=True)
    bio = ma.fields.String(required=True)
    email = ma.fields.Email(
        metadata={"description": "Only shown to the user themself and to admins."}
    )
    created_at = ma.fields.AwareDateTime(required=True)
    updated_at = ma.fields.AwareDateTime(required=True)
    version = ma.fields.Integer(required=True)


UserEnvelopeSchema = envelope_schema("UserEnvelope", UserSchema)
UserListEnvelopeSchema = envelope_schema("UserListEnvelope", UserSchema, many=True)
