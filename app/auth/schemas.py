"""Request and response shapes for authentication."""

from __future__ import annotations

import marshmallow as ma

from app.core.schemas import StrictSchema, Text, envelope_schema


class LoginSchema(StrictSchema):
    # Only the control-character rule: an address registered before today's rules still logs
    # in. The service puts it in its one form (NFKC, lower case) before looking it up.
    email = Text(
        required=True,
        min_length=1,
        max_length=254,
        check_format=False,
        metadata={"example": "ada@example.com"},
    )
    password = Text(
        required=True,
        min_length=1,
        max_length=1024,
        strip=False,
        check_format=False,
        load_only=True,
        metadata={"example": "correct horse battery"},
    )


class TokenSchema(ma.Schema):
    access_token = ma.fields.String(required=True)
    refresh_token = ma.fields.String(required=True)
    token_type = ma.fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = ma.fields.Integer(required=True, metadata={"description": "Seconds."})


TokenEnvelopeSchema = envelope_schema("TokenEnvelope", TokenSchema)
