"""Request and response shapes for authentication."""

from __future__ import annotations

import marshmallow as ma
from marshmallow import validate as v

from app.core.schemas import StrictSchema, envelope_schema


class LoginSchema(StrictSchema):
    email = ma.fields.String(
        required=True, validate=v.Length(min=1, max=254), metadata={"example": "ada@example.com"}
    )
    password = ma.fields.String(
        required=True,
        validate=v.Length(min=1, max=1024),
        load_only=True,
        metadata={"example": "correct horse battery"},
    )


class TokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "Seconds."})


TokenEnvelopeSchema = envelope_schema("TokenEnvelope", TokenSchema)
