"""The Mutation type: REST's writes, through the same services, schemas and limits.

Each input is loaded by the REST route's own marshmallow schema (the same rules, messages and
normalisation); `expectedVersion` / `ifMatch` are REST's If-Match (412 PRECONDITION_FAILED when
stale); `createUser` draws on the same per-IP registration budget as `POST /api/users`.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import marshmallow as ma
import strawberry
from flask import current_app
from strawberry.types import Info

from app.auth.service import family_of
from app.core.conditional import parse_if_match
from app.core.errors import RateLimited, ValidationFailed, flatten_messages
from app.core.limiting import charge, client_ip
from app.core.security import POSTS_WRITE_SCOPE, USERS_WRITE_SCOPE
from app.graphql.context import context_of, public_id
from app.graphql.types import PostNode, PostStatus, UserNode, user_from_row
from app.posts.schemas import PostCreateSchema, PostPatchSchema
from app.users.schemas import UserCreateSchema, UserPatchSchema

UNSET: Any = strawberry.UNSET
_CREATE_USER, _PATCH_USER = UserCreateSchema(), UserPatchSchema()
_CREATE_POST, _PATCH_POST = PostCreateSchema(), PostPatchSchema()
_CAMEL = re.compile(r"_([a-z])")


@strawberry.input(description="A new user (the fields of POST /api/users).")
class CreateUserInput:
    email: str
    username: str
    password: str
    display_name: str | None = UNSET
    bio: str | None = UNSET


@strawberry.input(
    description="Fields to change (PATCH /api/users/{id}); a new password needs "
    "`currentPassword` unless an admin sets it."
)
class UpdateUserInput:
    email: str | None = UNSET
    username: str | None = UNSET
    display_name: str | None = UNSET
    bio: str | None = UNSET
    password: str | None = UNSET
    current_password: str | None = UNSET


@strawberry.input(description="A new post (the fields of POST /api/users/{id}/posts).")
class CreatePostInput:
    title: str
    body: str | None = UNSET
    status: PostStatus | None = UNSET


@strawberry.input(description="Fields to change (PATCH /api/posts/{id}).")
class UpdatePostInput:
    title: str | None = UNSET
    body: str | None = UNSET
    status: PostStatus | None = UNSET


def load(schema: ma.Schema, given: object) -> dict[str, Any]:
    """The input as the REST route's schema loads it; its refusals as VALIDATION_ERROR, each
    field named as GraphQL spells it."""
    data = {
        name: value.value if isinstance(value, PostStatus) else value
        for name, value in vars(given).items()
        if value is not UNSET
    }
    try:
        loaded: dict[str, Any] = schema.load(data)
    except ma.ValidationError as error:
        details = [
            {**d, "field": _CAMEL.sub(lambda m: m.group(1).upper(), d["field"])}
            for d in flatten_messages(error.messages)
        ]
        raise ValidationFailed(details=details) from error
    return loaded


def expected(version: int | None, if_match: str | None) -> set[int] | None:
    """The versions a write may apply to: `ifMatch` read as the If-Match header, narrowed by
    `expectedVersion`; None: any."""
    versions = parse_if_match(if_match)
    if version is not None:
        versions = {version} if versions is None else versions & {version}
    return versions


VERSION_HELP = "The version you last read: a stale one is PRECONDITION_FAILED and changes nothing."
IF_MATCH_HELP = 'An ETag as REST\'s If-Match header takes it (e.g. "\\"v3\\""), the same check.'


ExpectedVersion = Annotated[int | None, strawberry.argument(description=VERSION_HELP)]
IfMatch = Annotated[str | None, strawberry.argument(description=IF_MATCH_HELP)]


@strawberry.type
class Mutation:
    @strawberry.mutation(
        description="Register a user (limited per client IP like POST /api/users)."
    )
    def create_user(self, info: Info[Any, Any], input: CreateUserInput) -> UserNode | None:
        refused = charge(current_app, "RATELIMIT_REGISTER")
        if refused is not None:
            raise RateLimited(headers=refused.headers())
        user = context_of(info).users.register(load(_CREATE_USER, input))
        return user_from_row(user, reveal_email=True)  # as REST's 201 shows it to its creator

    @strawberry.mutation(description="Change a user (the user themself, admins).")
    def update_user(
        self,
        info: Info[Any, Any],
        id: strawberry.ID,
        input: UpdateUserInput,
        expected_version: ExpectedVersion = None,
        if_match: IfMatch = None,
    ) -> UserNode | None:
        context = context_of(info)
        actor = context.require_viewer(USERS_WRITE_SCOPE)
        user = context.users.update(
            _id(id),
            load(_PATCH_USER, input),
            actor=actor,
            if_match=expected(expected_version, if_match),
            family=family_of(context.claims()),
            address=client_ip(),
        )
        return user_from_row(user)

    @strawberry.mutation(description="Create a post as this user (the user themself, admins).")
    def create_post(
        self, info: Info[Any, Any], user_id: strawberry.ID, input: CreatePostInput
    ) -> PostNode | None:
        context = context_of(info)
        actor = context.require_viewer(POSTS_WRITE_SCOPE)
        post = context.posts.create(_id(user_id), load(_CREATE_POST, input), actor=actor)
        return PostNode.from_row(post)

    @strawberry.mutation(description="Change a post (its author, admins).")
    def update_post(
        self,
        info: Info[Any, Any],
        id: strawberry.ID,
        input: UpdatePostInput,
        expected_version: ExpectedVersion = None,
        if_match: IfMatch = None,
    ) -> PostNode | None:
        context = context_of(info)
        actor = context.require_viewer(POSTS_WRITE_SCOPE)
        post = context.posts.update(
            _id(id),
            load(_PATCH_POST, input),
            actor=actor,
            if_match=expected(expected_version, if_match),
        )
        return PostNode.from_row(post)

    @strawberry.mutation(description="Soft-delete a post (its author, admins); true when done.")
    def delete_post(
        self,
        info: Info[Any, Any],
        id: strawberry.ID,
        expected_version: ExpectedVersion = None,
        if_match: IfMatch = None,
    ) -> bool | None:
        context = context_of(info)
        actor = context.require_viewer(POSTS_WRITE_SCOPE)
        context.posts.delete(_id(id), actor=actor, if_match=expected(expected_version, if_match))
        return True


def _id(value: strawberry.ID) -> uuid.UUID:
    return public_id(value)
