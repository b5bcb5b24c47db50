"""Request and response shapes of the OAuth apps API (`/api/oauth/clients`, `/api/me/...`)."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate as v

from app.core.schemas import JsonBoolean, StrictSchema, Text, envelope_schema
from app.core.security import USER_SCOPES
from app.oauth.models import NAME_MAX

REDIRECT_URIS_MAX = 10
URI_MAX = 2048


class ClientCreateSchema(StrictSchema):
    name = Text(required=True, min_length=1, max_length=NAME_MAX)
    redirect_uris = ma.fields.List(
        ma.fields.String(validate=v.Length(min=1, max=URI_MAX)),
        required=True,
        validate=v.Length(min=1, max=REDIRECT_URIS_MAX),
        metadata={"example": ["https://app.example.com/callback"]},
    )
    scopes = ma.fields.List(
        ma.fields.String(validate=v.OneOf(USER_SCOPES, error="Unknown scope {input!r}.")),
        required=True,
        validate=v.Length(min=1, max=len(USER_SCOPES)),
        metadata={"example": ["profile", "posts:write"]},
    )
    confidential = JsonBoolean(load_default=False)


class ClientSchema(ma.Schema):
    client_id = ma.fields.String(required=True)
    client_secret = ma.fields.String(
        metadata={"description": "Only in the answer to the creation of a confidential app."}
    )
    name = ma.fields.String(required=True)
    owner_id = ma.fields.UUID(required=True)
    redirect_uris = ma.fields.List(ma.fields.String(), required=True)
    scopes = ma.fields.List(ma.fields.String(), required=True)
    confidential = ma.fields.Boolean(required=True)
    created_at = ma.fields.DateTime(required=True)


class AuthorizationSchema(ma.Schema):
    client_id = ma.fields.String(required=True)
    name = ma.fields.String(required=True)
    scopes = ma.fields.List(ma.fields.String(), required=True)
    granted_at = ma.fields.DateTime(required=True)


ClientEnvelopeSchema = envelope_schema("ClientEnvelope", ClientSchema)
ClientListEnvelopeSchema = ma.Schema.from_dict(
    {"data": ma.fields.List(ma.fields.Nested(ClientSchema), required=True)},
    name="ClientListEnvelope",
)
AuthorizationListEnvelopeSchema = ma.Schema.from_dict(
    {"data": ma.fields.List(ma.fields.Nested(AuthorizationSchema), required=True)},
    name="AuthorizationListEnvelope",
)
