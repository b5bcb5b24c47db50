"""flask-smorest wiring: our error envelope in the handler and the docs, and a 400 parser."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

import marshmallow as ma
from flask import Request, Response
from flask_smorest import Api, Blueprint
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from app.core import errors


class ErrorDetailSchema(ma.Schema):
    field = ma.fields.String(required=True, metadata={"example": "email"})
    message = ma.fields.String(required=True, metadata={"example": "Not a valid email address."})


class ErrorBodySchema(ma.Schema):
    code = ma.fields.String(
        required=True,
        metadata={"example": "VALIDATION_ERROR"},
        validate=ma.validate.OneOf(sorted({code for code, _ in errors.HTTP_CODES.values()})),
    )
    message = ma.fields.String(required=True, metadata={"example": "The request is not valid."})
    details = ma.fields.List(
        ma.fields.Nested(ErrorDetailSchema), validate=ma.validate.Length(max=errors.MAX_DETAILS)
    )


class ErrorEnvelopeSchema(ma.Schema):
    error = ma.fields.Nested(ErrorBodySchema, required=True)


class RestApi(Api):
    """Api whose every error, and every documented error response, is the contract's envelope."""

    ERROR_SCHEMA = ErrorEnvelopeSchema

    def handle_http_exception(self, error: HTTPException) -> Response:
        return errors.handle_http_exception(error)


# Unknown fields a body may carry and still have each one named in the answer; beyond it the body
# is refused before marshmallow walks it (it would build one error per key: 60,000 keys cost
# 0.2-2 s of CPU).
MAX_UNKNOWN_FIELDS = 10


class JsonParser(FlaskParser):
    """Validation failures are 400 with per-field details; a non-JSON body is 415."""

    DEFAULT_VALIDATION_STATUS = 400

    def pre_load(
        self, location_data: Any, *, schema: ma.Schema, req: Request, location: str
    ) -> Any:
        """Refuse, in one set difference, a body with more unknown fields than anyone sends by
        mistake: validation work stays bounded by the schema's size, not the body's."""
        if (
            isinstance(location_data, Mapping)
            and schema.unknown == ma.RAISE
            and len(location_data) > len(schema.load_fields) + MAX_UNKNOWN_FIELDS
        ):
            accepted = {f.data_key or name for name, f in schema.load_fields.items()}
            unknown = len(location_data.keys() - accepted)
            if unknown > MAX_UNKNOWN_FIELDS:
                raise errors.ValidationFailed(
                    details=[
                        {
                            "field": "body",
                            "message": f"{unknown} unknown fields; the fields accepted here "
                            f"are: {', '.join(sorted(accepted))}.",
                        }
                    ]
                )
        return location_data

    def load_json(self, req: Request, schema: ma.Schema) -> Any:
        if not req.is_json:
            raise errors.UnsupportedMediaType()
        try:
            return super().load_json(req, schema)
        except (ValueError, RecursionError) as exc:  # deep nesting, numbers over 4300 digits
            raise errors.ValidationFailed(
                "The request body is not valid JSON.",
                details=[
                    {
                        "field": "body",
                        "message": "Invalid JSON: nested too deeply or a number too long.",
                    }
                ],
            ) from exc

    def _handle_invalid_json_error(self, error: Any, req: Request, *a: Any, **k: Any) -> NoReturn:
        reason = str(error) if isinstance(error, json.JSONDecodeError) else "not UTF-8"
        raise errors.ValidationFailed(
            "The request body is not valid JSON.",
            details=[{"field": "body", "message": f"Invalid JSON: {reason}"}],
        )


# The attribute `authenticated(scope=...)` leaves on a view: the scope `operation` documents.
REQUIRED_SCOPE = "required_scope"
OAUTH2_SCHEME = "oauth2"

# Where `operation` keeps the header parameters it documents (see ApiBlueprint).
EXTRA_PARAMETERS = "extra_parameters"


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = JsonParser()
    PAGINATION_ARGUMENTS_PARSER = JsonParser()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_extra_parameters_doc)

    @staticmethod
    def _prepare_extra_parameters_doc(
        doc: dict[str, Any], doc_info: dict[str, Any], **_kwargs: Any
    ) -> dict[str, Any]:
        """Add the header parameters `operation` declared to those the query schema produced
        (a manual `parameters` doc would replace them: `?as_of=` beside `If-None-Match`)."""
        extra = doc_info.get(EXTRA_PARAMETERS)
        if extra:
            doc["parameters"] = [*doc.get("parameters", []), *extra]
        return doc


def errors_doc(blp: Blueprint, *statuses: int) -> Any:
    """Document error responses (each a $ref to the shared error-envelope response); 429 always."""
    from http import HTTPStatus

    def decorator(view: Any) -> Any:
        for status in sorted({*statuses, 429}):  # every API route is rate limited
            view = blp.alt_response(status, response=HTTPStatus(status).name)(view)
        return view

    return decorator


IF_MATCH = {
    "in": "header",
    "name": "If-Match",
    "required": False,
    "schema": {"type": "string"},
    "description": "Only write if the resource is still at this ETag (else 412).",
}
IF_NONE_MATCH = {
    "in": "header",
    "name": "If-None-Match",
    "required": False,
    "schema": {"type": "string"},
    "description": "304 Not Modified when the resource still has this ETag.",
}
ETAG_HEADER = {"ETag": {"schema": {"type": "string"}, "description": "The resource version."}}


def operation(
    blp: Blueprint,
    operation_id: str,
    *,
    security: list[dict[str, list[str]]] | None = None,
    links: dict[int, dict[str, dict[str, Any]]] | None = None,
    conditional: str | None = None,
) -> Any:
    """Name an operation (generated clients use the name) and add its OpenAPI links.

    `links` maps a status to `{link name: (operationId, {param: runtime expression})}` entries,
    which schemathesis' stateful phase and client generators follow. `conditional="read"`
    documents If-None-Match (and 304), `"write"` documents If-Match.
    """
    doc: dict[str, Any] = {"operationId": operation_id}
    parameters: list[dict[str, Any]] = []
    if security is not None:
        doc["security"] = security
    if conditional == "read":
        parameters = [IF_NONE_MATCH]
        doc["responses"] = {304: {"description": "Not Modified", "headers": ETAG_HEADER}}
    elif conditional == "write":
        parameters = [IF_MATCH]
    if links:
        doc["responses"] = {status: {"links": dict(named)} for status, named in links.items()}

    def decorator(view: Any) -> Any:
        if (
            security and "bearerAuth" in security[0]
        ):  # a bearer route: an app's OAuth token with the route's scope works too
            scope = getattr(view, REQUIRED_SCOPE, None)
            app_token = {OAUTH2_SCHEME: [scope] if scope else []}
            doc["security"] = [*security[:1], app_token, *security[1:]]
        view = blp.doc(**doc)(view)
        if parameters:
            view._apidoc = {**view._apidoc, EXTRA_PARAMETERS: parameters}
        return view

    return decorator


def link(operation_id: str, **parameters: str) -> dict[str, Any]:
    return {"operationId": operation_id, "parameters": parameters}
