"""Fuzzing /graphql with hypothesis-graphql over the served SDL (schemathesis' GraphQL engine):
queries and mutations, valid and invalid, anonymous and signed in. Never a 5xx, never a stack
trace or SQL, every error with a contract code (INTERNAL_ERROR would be a bug)."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema

from app.graphql.schema import sdl
from tests.support.graphql import codes, gql

CODES = {
    "VALIDATION_ERROR",
    "UNAUTHENTICATED",
    "FORBIDDEN",
    "NOT_FOUND",
    "CONFLICT",
    "PRECONDITION_FAILED",
    "METHOD_NOT_ALLOWED",
    "RATE_LIMITED",
}
SCALARS = {
    "DateTime": st.just("2026-11-21T04:12:00+00:00").map(
        lambda v: __import__("graphql").StringValueNode(value=v)
    )
}
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def check(response) -> None:
    assert response.status_code < 500, response.get_data(as_text=True)
    found = codes(response)  # also: no traceback, no SQL
    assert set(found) <= CODES, response.get_json()
    if response.status_code == 200:
        assert "data" in response.get_json()


@FUZZ
@given(document=from_schema(sdl(), custom_scalars=SCALARS, allow_x00=False))
def test_valid_documents_anonymous(client, document):
    check(gql(client, document))


@FUZZ
@given(document=from_schema(sdl(), custom_scalars=SCALARS, allow_x00=False))
def test_valid_documents_signed_in(client, account, document):
    check(gql(client, document, headers=account.headers))


@FUZZ
@given(document=from_schema(sdl(), custom_scalars=SCALARS, mode=Mode.NEGATIVE))
def test_invalid_documents(client, document):
    check(gql(client, document))


@FUZZ
@given(text=st.text(alphabet=string.printable, max_size=200))
def test_arbitrary_text(client, text):
    check(gql(client, text))
