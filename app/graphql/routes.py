"""`POST /graphql`, `GET /graphql` (queries only) and `GET /graphql/schema.graphql`.

One more door into the same service, through the same pipeline (app/core/pipeline.py) as every
route: the pipeline has already identified the caller and charged their rate-limit budget (one
hit per request, REST's budget) before this view runs; `@authenticated(optional=True)` refuses a
presented but invalid token (401) before the document is even read, as REST does; the finish step
writes the access line and metrics with the operation's name and type.

HTTP statuses: 200 for an executed operation (field errors included, in `errors`); 400 when the
request or its document is refused before execution (not JSON, no query, a syntax or validation
error, bad variables, over a bound); 405 (with `Allow: POST`) for a mutation sent by GET; 401,
413, 415 and 429 from the pipeline; 429 with Retry-After, too, when an operation ran into a limit
of its own (registrations, password guesses). Every error is in GraphQL's
`{"errors": [{"message", "extensions": {"code", "details"?}}]}`; a response that is not 200 also
carries the contract's envelope `{"error": {"code", "message", "details"?}}` (its first error).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from functools import cache
from typing import Any

import marshmallow as ma
from flask import Response, current_app, g, request
from flask.views import MethodView
from strawberry.exceptions import MissingQueryError
from strawberry.http.ides import get_graphql_ide_html
from strawberry.schema.exceptions import CannotGetOperationTypeError, InvalidOperationTypeError
from strawberry.types.graphql import OperationType

from app.auth.guard import BEARER_AUTH, authenticated, caller, current_principal
from app.core.api import ApiBlueprint, ErrorBodySchema
from app.core.cached_read import reads_ahead
from app.core.errors import AppError, InsufficientScope, ValidationFailed, envelope
from app.core.limiting import client_ip
from app.core.pipeline import current_caller, name_operation
from app.graphql.context import RequestContext
from app.graphql.errors import classify, formatted
from app.graphql.reads_ahead import root_reads
from app.graphql.schema import schema, sdl

blp = ApiBlueprint(
    "graphql", __name__, url_prefix="/graphql", description="GraphQL (docs/graphql.md)."
)

# Whole-request statuses an operation's errors take over (each comes with its Retry-After).
PROMOTED = {"RATE_LIMITED": 429, "SERVICE_UNAVAILABLE": 503}
IDE_CSP = (
    "default-src 'none'; script-src https://unpkg.com{hashes}; style-src https://unpkg.com "
    "'unsafe-inline'; img-src 'self' data:; font-src https://unpkg.com data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# A POST body larger than this gets no read-ahead (a 2,000-token document fits well within it).
READ_AHEAD_BODY = 32 * 1024
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\ssrc\s*=)[^>]*>(.*?)</script\s*>", re.S | re.I)


class MutationOverGet(AppError):
    status, code = 405, "METHOD_NOT_ALLOWED"
    default_message = "Mutations are sent by POST; GET carries queries only."

    def __init__(self) -> None:
        super().__init__(headers={"Allow": "POST"})


class GraphQLRequestSchema(ma.Schema):
    """Documents the body (the view reads it itself: a GraphQL request's errors are GraphQL's).
    Other members (`extensions`, ...) are ignored, as GraphQL over HTTP allows."""

    class Meta:
        unknown = ma.INCLUDE

    query = ma.fields.String(required=True, metadata={"example": "{ me { id username } }"})
    variables = ma.fields.Dict(allow_none=True)
    operationName = ma.fields.String(allow_none=True)  # noqa: N815 - GraphQL's own name


class GraphQLResponseSchema(ma.Schema):
    data = ma.fields.Dict(allow_none=True)
    errors = ma.fields.List(
        ma.fields.Dict(),
        metadata={"description": "Each with `message` and `extensions.code` (REST's codes)."},
    )
    error = ma.fields.Nested(
        ErrorBodySchema,
        metadata={"description": "On an answer that is not 200: the contract's error envelope."},
    )


_GRAPHQL_ERRORS = {
    str(status): {
        "description": reason + " (`errors[].extensions.code`).",
        "content": {"application/json": {"schema": GraphQLResponseSchema}},
    }
    for status, reason in (
        (400, "Not JSON, no query, a syntax or validation error, or over a bound"),
        (401, "An invalid or expired bearer token"),
        (405, "A mutation sent by GET"),
        (413, "Body too large"),
        (415, "Body not JSON"),
        (429, "Rate limited"),
    )
}


def _sent() -> tuple[Any, Any, Any]:
    """(query, variables, operationName) as the request sent them, read once per request (the
    read-ahead and the view both ask); ValidationFailed when the JSON does not parse."""
    sent: tuple[Any, Any, Any] | None = g.get("graphql_sent")
    if sent is None:
        sent = g.graphql_sent = _by_get() if request.method == "GET" else _by_post()
    return sent


def _by_get() -> tuple[Any, Any, Any]:
    variables = request.args.get("variables")
    return (
        request.args.get("query"),
        _json_argument(variables, "variables") if variables else None,
        request.args.get("operationName"),
    )


def _by_post() -> tuple[Any, Any, Any]:
    body = _json_argument(request.get_data(cache=True, as_text=True), "body")
    if not isinstance(body, dict):
        raise ValidationFailed(
            "Send one GraphQL request as a JSON object (batches are not accepted).",
            details=[{"field": "body", "message": "Not a JSON object."}],
        )
    return body.get("query"), body.get("variables"), body.get("operationName")


def _reads_ahead() -> list[tuple[str, object]]:
    """The cache entries this request's query reads first (app/graphql/reads_ahead.py)."""
    if request.method == "POST" and not 0 < (request.content_length or 0) <= READ_AHEAD_BODY:
        return []  # this runs before the rate limit: no parsing of large bodies for it
    try:
        query, variables, operation_name = _sent()
    except AppError:
        return []  # the view answers it
    caller = current_caller()
    subject = caller.subject if caller is not None else None
    return root_reads(schema._schema, query, variables, operation_name, subject)


@blp.route("")
class GraphQLEndpoint(MethodView):
    @blp.doc(
        operationId="graphqlGet",
        security=[*BEARER_AUTH, {}],
        summary="Run a GraphQL query given in the query string (queries only).",
        parameters=[
            {"in": "query", "name": "query", "required": True, "schema": {"type": "string"}},
            {"in": "query", "name": "variables", "schema": {"type": "string"}},
            {"in": "query", "name": "operationName", "schema": {"type": "string"}},
        ],
        responses=_GRAPHQL_ERRORS,
    )
    @blp.response(200, GraphQLResponseSchema)
    @authenticated(optional=True)
    @reads_ahead(_reads_ahead)
    def get(self) -> Any:
        """GraphQL over GET (GraphiQL in a browser, outside production)."""
        if "query" not in request.args and _wants_ide():
            return _ide()
        return run(*_sent(), get=True)

    @blp.doc(
        operationId="graphqlPost",
        security=[*BEARER_AUTH, {}],
        summary="Run a GraphQL query or mutation.",
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": GraphQLRequestSchema}},
        },
        responses=_GRAPHQL_ERRORS,
    )
    @blp.response(200, GraphQLResponseSchema)
    @authenticated(optional=True)
    @reads_ahead(_reads_ahead)
    def post(self) -> Any:
        """GraphQL over POST: `{"query", "variables"?, "operationName"?}`."""
        return run(*_sent(), get=False)


@blp.route("/schema.graphql")
class SchemaDocument(MethodView):
    @blp.doc(operationId="graphqlSchema", security=[], summary="The schema's SDL.")
    @blp.response(200, description="The SDL (text/plain), as kept in docs/schema.graphql.")
    def get(self) -> Any:
        """The schema, in SDL."""
        return Response(_sdl(), mimetype="text/plain", headers={"Cache-Control": "no-cache"})


@cache
def _sdl() -> str:
    return sdl()


def run(query: Any, variables: Any, operation_name: Any, *, get: bool) -> Response:
    """Execute one request's operation and answer it (status per the module's docstring)."""
    problems = []
    if not isinstance(query, str) or not query.strip():
        problems.append({"field": "query", "message": "A GraphQL document is required."})
    if variables is not None and not isinstance(variables, dict):
        problems.append({"field": "variables", "message": "Must be a JSON object."})
    if operation_name is not None and not isinstance(operation_name, str):
        problems.append({"field": "operationName", "message": "Must be a string."})
    name = operation_name if isinstance(operation_name, str) else None
    name_operation(name, "invalid")
    if problems:
        raise ValidationFailed(details=problems)
    context = RequestContext(viewer=current_principal(), caller=caller(), address=client_ip())
    allowed = {OperationType.QUERY} if get else {OperationType.QUERY, OperationType.MUTATION}
    try:
        result = schema.execute_sync(
            query,
            variable_values=variables,
            context_value=context,
            operation_name=name,
            allowed_operation_types=allowed,
        )
    except InvalidOperationTypeError as error:
        name_operation(name, error.operation_type.value)
        raise MutationOverGet() from error
    except CannotGetOperationTypeError as error:
        raise ValidationFailed(
            error.as_http_error_reason(),
            details=[{"field": "operationName", "message": "No single operation to run."}],
        ) from error
    except MissingQueryError as error:
        raise ValidationFailed(
            details=[{"field": "query", "message": "A GraphQL document is required."}]
        ) from error
    if context.operation_type is not None:
        name_operation(context.operation_name or name, context.operation_type)
    return answer(result.data, list(result.errors or []))


def answer(data: Any, errors: list[Any]) -> Response:
    """The GraphQL response: 400 without `data` when nothing ran; else 200 with `data` (and any
    field errors), or the status of a limit an operation ran into."""
    refused = data is None and bool(errors) and all(e.path is None for e in errors)
    body: dict[str, Any] = {} if refused else {"data": data}
    status, headers = (400 if refused else 200), dict[str, str]()
    cause = errors[0] if errors else None
    if errors:
        body["errors"] = [formatted(e) for e in errors]
        for error in errors:
            code, _, _, domain = classify(error)
            if isinstance(domain, InsufficientScope):  # as REST says it (docs/oauth.md)
                headers.setdefault("WWW-Authenticate", domain.headers["WWW-Authenticate"])
            if code in PROMOTED and status == 200:
                status, cause = PROMOTED[code], error
                headers.update(domain.headers if domain is not None else {"Retry-After": "2"})
    if status != 200 and cause is not None:  # the contract's envelope beside GraphQL's list
        code, message, details, _ = classify(cause)
        body = {"error": envelope(code, message, details)["error"], **body}
    return Response(
        current_app.json.dumps(body), status=status, headers=headers, mimetype="application/json"
    )


def _json_argument(text: str, field: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as error:  # deep nesting, numbers over 4300 digits
        raise ValidationFailed(
            "The request body is not valid JSON." if field == "body" else f"{field}: not JSON.",
            details=[{"field": field, "message": "Invalid JSON."}],
        ) from error


def _wants_ide() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/html"])
    return best == "text/html" and not current_app.extensions["settings"].production


def _ide() -> Response:
    """GraphiQL (outside production only), its scripts from unpkg, inline ones by hash."""
    page = get_graphql_ide_html("graphiql")
    hashes = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'"
        for s in _INLINE_SCRIPT.findall(page)
    )
    csp = IDE_CSP.format(hashes=hashes)
    return Response(page, mimetype="text/html", headers={"Content-Security-Policy": csp})
